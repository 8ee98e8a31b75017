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
    /// Where the monitor's challenges go (started with --monitor-listen).
    private(set) var monitorAddress: NodeAddress?
    /// Where it serves metrics (started with --metrics-listen).
    private(set) var metricsAddress: NodeAddress?
    private let stderrPipe = Pipe()

    init(_ test: XCTestCase, export: String, data: String, listen: NodeAddress = NodeAddress(host: "127.0.0.1", port: 0),
         extraArguments: [String] = [], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: BatonBinary.path)
        // Tests write as root: no root_squash unless `extraArguments` asks (the last --squash counts).
        process.arguments = ["serve", "--export", export, "--data", data, "--listen", listen.description, "--squash", "none"]
            + extraArguments
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
        // The server prints "listening HOST:PORT [monitor HOST:PORT]" once it accepts connections.
        let words = stdout.fileHandleForReading.readLine()?.split(separator: " ").map(String.init) ?? []
        guard words.first == "listening", words.count >= 2, let bound = NodeAddress(words[1]) else {
            process.waitUntilExit()
            let log = String(decoding: stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw TestError("baton serve did not start (exit \(process.terminationStatus)): \(log)")
        }
        address = bound
        func after(_ word: String) -> NodeAddress? {
            words.firstIndex(of: word).flatMap { $0 + 1 < words.count ? NodeAddress(words[$0 + 1]) : nil }
        }
        monitorAddress = after("monitor")
        metricsAddress = after("metrics")
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

/// Clients that say hello and then send getattr requests as fast as the
/// socket takes them, each on a thread of its own, reading (and counting)
/// the replies on another: the load that starved the monitor (issue 13).
final class PipeliningClients: @unchecked Sendable {
    private let sockets: [Int32]
    private let stopped = ManagedAtomicCounter()
    private let replies = ManagedAtomicCounter()
    private let threads = DispatchGroup()

    init(count: Int, to address: NodeAddress, export: String) {
        sockets = (0..<count).compactMap { _ in rawTCPSocket(to: address) }
        var batch: [UInt8] = []
        for sequence in 1...4096 {
            batch += Message.request(sequence: UInt64(sequence), oldestUnanswered: 1, .getattr(rootInode)).frame()
        }
        for (index, fd) in sockets.enumerated() {
            let hello = Message.hello(export: export, session: 1000 + UInt64(index), version: Message.protocolVersion).frame()
            DispatchQueue.global().async(group: threads) { [self, batch] in
                guard sendAll(fd, hello) else { return }
                while stopped.value == 0, sendAll(fd, batch) {}
            }
            DispatchQueue.global().async(group: threads) { [self] in countReplies(fd) }
        }
    }

    /// Replies received so far (the welcomes not counted).
    var answered: Int { max(0, replies.value - sockets.count) }

    func waitUntilAnswered(_ count: Int, timeout: Duration) throws {
        let deadline = ContinuousClock.now + timeout
        while answered < count {
            guard ContinuousClock.now < deadline else { throw TestError("only \(answered) of \(count) pipelined requests answered") }
            usleep(10_000)
        }
    }

    func stop() {
        stopped.increment()
        for fd in sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        threads.wait()
        for fd in sockets { close(fd) }
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let got = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if got <= 0 { return false }
            sent += got
        }
        return true
    }

    /// Counts whole frames: 4 bytes of length, then the body.
    private func countReplies(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var pending: [UInt8] = []
        var skip = 0
        while true {
            let got = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if got <= 0 { return }
            var index = 0
            while index < got {
                if skip > 0 {
                    let taken = min(skip, got - index)
                    skip -= taken
                    index += taken
                    if skip == 0 { replies.increment() }
                    continue
                }
                pending.append(buffer[index])
                index += 1
                if pending.count == 4 {
                    skip = Int(pending[0]) | Int(pending[1]) << 8 | Int(pending[2]) << 16 | Int(pending[3]) << 24
                    pending.removeAll(keepingCapacity: true)
                    if skip == 0 { replies.increment() }
                }
            }
        }
    }
}

/// Polls `condition` until it holds, failing with `what` after `timeout` seconds.
func waitUntil(_ what: @autoclosure () -> String, timeout: TimeInterval = 20, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while try !condition() {
        guard Date() < deadline else { throw TestError("not within \(timeout) s: \(what())") }
        usleep(20_000)
    }
}
