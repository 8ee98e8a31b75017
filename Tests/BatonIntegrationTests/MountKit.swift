import BatonRuntime
import Foundation
import XCTest

/// The repository root, for scripts under mountscripts/.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// A real FUSE mount made by `baton mount -f` (a child process, so the test
/// knows its PID). Unmounted and ended at teardown, also when the test fails.
final class MountProcess {
    let process = Process()
    let mountpoint: String
    let logPath: String

    /// `networkNamespace`: a namespace of `ip netns` whose network the mount
    /// uses; only the network is entered (nsenter), so the mount is seen here.
    init(_ test: XCTestCase, source: String, mountpoint: String, options: [String] = [], networkNamespace: String? = nil) throws {
        self.mountpoint = mountpoint
        self.logPath = mountpoint + ".log"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let arguments = ["mount", source, mountpoint, "-f"] + (options.isEmpty ? [] : ["-o", options.joined(separator: ",")])
        if let networkNamespace {
            // nsenter replaces itself with baton: the PID is the mount's.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
            process.arguments = ["--net=/run/netns/\(networkNamespace)", BatonBinary.path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: BatonBinary.path)
            process.arguments = arguments
        }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardError = log
        process.standardOutput = log
        try process.run()
        let process = self.process
        test.addTeardownBlock {
            if MountProcess.isMounted(mountpoint) { _ = try? runCommand("/bin/fusermount3", ["-u", "-z", mountpoint]) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }
        let deadline = Date().addingTimeInterval(15)
        while !Self.isMounted(mountpoint) {
            guard process.isRunning, Date() < deadline else {
                throw TestError("baton mount did not mount \(mountpoint): \(self.log)")
            }
            usleep(20_000)
        }
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    static func isMounted(_ mountpoint: String) -> Bool {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == mountpoint }
    }

    /// SIGTERM, as an admin or systemd would stop it; returns the exit status.
    func terminate() -> Int32 {
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// An export served by a real server process and mounted by a real client.
final class MountedExport {
    let directory: String
    var server: ServerProcess
    let mount: MountProcess
    let exportName: String
    var path: String { mount.mountpoint }

    init(_ test: XCTestCase, name: String = #function, options: [String] = []) throws {
        directory = try temporaryDirectory(test, name)
        exportName = "export"
        server = try ServerProcess(test, export: exportName, data: directory + "/data")
        mount = try MountProcess(test, source: "\(exportName)@\(server.address)", mountpoint: directory + "/mnt", options: options)
    }

    /// kill -9 of the server, then a new one on the same data and port.
    func restartServerHard(_ test: XCTestCase, pause: TimeInterval = 0) throws {
        server.kill9()
        if pause > 0 { Thread.sleep(forTimeInterval: pause) }
        server = try ServerProcess(test, export: exportName, data: directory + "/data", listen: server.address)
    }
}

struct CommandResult {
    var status: Int32
    var output: String
}

/// A CA in `directory` and a certificate for each (role, name), by `baton cert`.
func makeCertificates(in directory: String, _ identities: [(role: String, name: String)]) throws {
    let made = try runCommand(BatonBinary.path, ["cert", "ca", "--out", directory])
    guard made.status == 0 else { throw TestError("baton cert ca failed: \(made.output)") }
    for (role, name) in identities {
        let issued = try runCommand(BatonBinary.path, ["cert", "issue", "--ca", directory, "--role", role, "--name", name, "--out", directory])
        guard issued.status == 0 else { throw TestError("baton cert issue failed: \(issued.output)") }
    }
}

/// Runs a program to completion, capturing stdout and stderr together.
@discardableResult
func runCommand(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, output: String(decoding: output, as: UTF8.self))
}

/// Starts a program in the background; it is killed by PID at teardown if still running.
func start(_ test: XCTestCase, _ executable: String, _ arguments: [String], output: String) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    _ = FileManager.default.createFile(atPath: output, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    test.addTeardownBlock {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
    return process
}
