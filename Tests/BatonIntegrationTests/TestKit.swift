import BatonCore
import BatonRuntime
import Foundation
import Glibc
import Logging
import NIOCore
import XCTest

/// XCTest brings Foundation.Operation; these tests mean the file system operation.
typealias Operation = BatonCore.Operation

/// The `baton` executable built beside the tests.
enum BatonBinary {
    static var path: String {
        if let path = ProcessInfo.processInfo.environment["BATON_BIN"] { return path }
        // On Linux the test bundle's URL is the build products directory itself.
        let bundle = Bundle(for: ServerProcess.self).bundleURL
        for directory in [bundle, bundle.deletingLastPathComponent()] {
            let candidate = directory.appendingPathComponent("baton").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return bundle.appendingPathComponent("baton").path
    }
}

/// A scratch directory removed at the end of the test, also when it fails.
func temporaryDirectory(_ test: XCTestCase, _ name: String = #function) throws -> String {
    let path = NSTemporaryDirectory() + "baton-test-\(name.filter(\.isLetter))-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// A real `baton serve` process. Killed (by PID) at the end of the test whatever happens.
final class ServerProcess {
    let process = Process()
    private(set) var address: NodeAddress
    private let stderrPipe = Pipe()

    init(_ test: XCTestCase, export: String, data: String, listen: NodeAddress = NodeAddress(host: "127.0.0.1", port: 0),
         extraArguments: [String] = [], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: BatonBinary.path)
        process.arguments = ["serve", "--export", export, "--data", data, "--listen", listen.description] + extraArguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let stdout = Pipe()
        process.standardOutput = stdout
        process.standardError = stderrPipe
        try process.run()
        let process = self.process
        test.addTeardownBlock {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        // The server prints "listening HOST:PORT" once it accepts connections.
        let line = stdout.fileHandleForReading.readLine()
        guard let line, line.hasPrefix("listening "), let bound = NodeAddress(String(line.dropFirst("listening ".count))) else {
            process.waitUntilExit()
            let log = String(decoding: stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw TestError("baton serve did not start (exit \(process.terminationStatus)): \(log)")
        }
        address = bound
    }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func terminate() -> Int32 {
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// What the server logged (only after it exited).
    var log: String { String(decoding: stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}


extension ServerConnection {
    /// Sends and waits, for tests.
    func call(_ operation: Operation, timeout: TimeInterval = 30) -> Reply {
        let done = DispatchSemaphore(value: 0)
        let box = ReplyBox()
        send(operation) { reply in
            box.reply = reply
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success else { return .error(.ETIMEDOUT) }
        return box.reply!
    }
}

final class ReplyBox: @unchecked Sendable {
    var reply: Reply?
}

let testLogger: Logger = {
    var logger = Logger(label: "baton.test")
    logger.logLevel = .warning
    return logger
}()

/// A tmpfs of `size` (e.g. "8m") at `directory`/small, unmounted at teardown:
/// a disk that fills up. Needs root.
func smallDisk(_ test: XCTestCase, in directory: String, size: String) throws -> String {
    let mountpoint = directory + "/small"
    try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
    let mounted = try runCommand("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", mountpoint])
    guard mounted.status == 0 else { throw TestError("cannot mount a tmpfs: \(mounted.output)") }
    test.addTeardownBlock { _ = try? runCommand("/bin/umount", ["-l", mountpoint]) }
    return mountpoint
}

/// A plain blocking TCP socket connected to `address` (IPv4), for tests that
/// speak raw bytes or just hold a connection open; nil if the connect fails.
func rawTCPSocket(to address: NodeAddress, receiveBufferBytes: Int32? = nil) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    if var bytes = receiveBufferBytes { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, socklen_t(MemoryLayout<Int32>.size)) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = in_port_t(UInt16(address.port).bigEndian)
    sin.sin_addr.s_addr = inet_addr(address.host)
    let connected = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else {
        close(fd)
        return nil
    }
    return fd
}
