// Goal: a real FUSE mount of a real export server behaves as a POSIX file
// system, keeps fio's verify happy across a server kill -9, and never hangs:
// a request waits for the server to come back, up to the mount's timeout.
// Method: `baton serve` and `baton mount -f` as processes, fio, cp and diff,
// the repo's posix-check script; all removed at teardown by PID.
import BatonCore
import BatonRuntime
import Foundation
import XCTest

final class MountTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    private func fio(_ arguments: [String]) throws -> CommandResult {
        try runCommand("/usr/bin/fio", ["--ioengine=psync", "--output-format=normal", "--verify_state_save=0"] + arguments)
    }

    func testFioVerifyThroughTheMount() throws {
        let export = try MountedExport(self)
        let result = try fio(["--name=verify", "--directory=\(export.path)", "--rw=randwrite", "--bsrange=4k-256k",
                              "--size=32m", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("err= 0"), result.output)
    }

    func testTreeCopyMatchesTheOriginal() throws {
        let export = try MountedExport(self)
        let source = repositoryRoot + "/Sources"
        let copy = try runCommand("/bin/cp", ["-a", source, export.path + "/tree"])
        XCTAssertEqual(copy.status, 0, copy.output)
        let diff = try runCommand("/usr/bin/diff", ["-r", "--no-dereference", source, export.path + "/tree"])
        XCTAssertEqual(diff.status, 0, diff.output)
    }

    /// kill -9 of the server while fio writes and verifies: the mount waits,
    /// re-sends to the restarted server, and fio finishes with no error.
    func testFioVerifyRidesThroughServerKill9() throws {
        let export = try MountedExport(self)
        let fioLog = export.directory + "/fio.out"
        let job = try start(self, "/usr/bin/fio", [
            "--name=ride", "--directory=\(export.path)", "--rw=write", "--bs=64k", "--size=96m", "--ioengine=psync",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--fsync=16", "--verify_state_save=0",
        ], output: fioLog)
        // Let writes flow, then pull the server out from under them.
        let deadline = Date().addingTimeInterval(10)
        while (try? FileManager.default.contentsOfDirectory(atPath: export.path).isEmpty) ?? true, Date() < deadline {
            usleep(50_000)
        }
        usleep(500_000)
        XCTAssertTrue(job.isRunning, "fio finished before the failure; the test tested nothing")
        try export.restartServerHard(self, pause: 0.5)
        job.waitUntilExit()
        let output = (try? String(contentsOfFile: fioLog, encoding: .utf8)) ?? ""
        XCTAssertEqual(job.terminationStatus, 0, output)
        XCTAssertTrue(output.contains("err= 0"), output)
        XCTAssertTrue(export.mount.log.contains("reconnecting"), "the mount never saw the server go: \(export.mount.log)")
    }

    /// Issue 13: `truncate -s 900T` (past ext4's largest file) failed the
    /// server's own ftruncate after the record was journaled: the server
    /// stopped and the journal never replayed again. The size change is now
    /// refused with EFBIG before it is journaled; the server goes on, and
    /// the export opens again after a restart.
    func testATruncatePastTheNodesLargestFileIsRefusedAndTheExportGoesOn() throws {
        let export = try MountedExport(self)
        let file = export.path + "/f"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("kept".utf8)))
        let truncate = try runCommand("/usr/bin/truncate", ["-s", "900T", file])
        XCTAssertNotEqual(truncate.status, 0, "the node's file system took a 900 TiB file: this test tests nothing here")
        XCTAssertTrue(truncate.output.contains("File too large"), truncate.output)
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "kept")
        XCTAssertTrue(FileManager.default.createFile(atPath: export.path + "/after", contents: Data("more".utf8)))
        XCTAssertTrue(export.server.process.isRunning, "the server stopped")
        XCTAssertEqual(export.server.terminate(), 0)
        export.server = try ServerProcess(self, export: export.exportName, data: export.directory + "/data",
                                          listen: export.server.address)
        XCTAssertEqual(try String(contentsOfFile: export.path + "/after", encoding: .utf8), "more")
    }

    /// Inode numbers come from the export, so they survive a server restart.
    func testInodeNumbersSurviveServerRestart() throws {
        let export = try MountedExport(self, options: ["attr_timeout=0", "entry_timeout=0"])
        let file = export.path + "/f"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        var before = stat()
        XCTAssertEqual(stat(file, &before), 0)
        try export.restartServerHard(self)
        var after = stat()
        XCTAssertEqual(stat(file, &after), 0, "stat after restart: errno \(errno)")
        XCTAssertEqual(before.st_ino, after.st_ino)
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "x")
    }

    /// With the server gone for good, a request fails with EIO after the
    /// mount's timeout instead of hanging forever.
    func testRequestsFailWithEIOAfterTheTimeoutWhenNoServerReturns() throws {
        let export = try MountedExport(self, options: ["timeout=2", "attr_timeout=0", "entry_timeout=0"])
        export.server.kill9()
        let started = Date()
        var st = stat()
        let result = stat(export.path + "/anything", &st)
        let failure = errno
        XCTAssertEqual(result, -1)
        XCTAssertEqual(failure, EIO)
        XCTAssertLessThan(Date().timeIntervalSince(started), 20)
    }

    func testSIGTERMUnmountsCleanly() throws {
        let export = try MountedExport(self)
        XCTAssertEqual(export.mount.terminate(), 0, export.mount.log)
        XCTAssertFalse(MountProcess.isMounted(export.path))
    }

    func testMountOfUnknownExportFailsWithAClearError() throws {
        let directory = try temporaryDirectory(self)
        let server = try ServerProcess(self, export: "real", data: directory + "/data")
        try FileManager.default.createDirectory(atPath: directory + "/mnt", withIntermediateDirectories: true)
        let result = try runCommand(BatonBinary.path, ["mount", "nosuch@\(server.address)", directory + "/mnt"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.output.contains("serves export 'real', not 'nosuch'"), result.output)
        XCTAssertFalse(MountProcess.isMounted(directory + "/mnt"))
    }
}

/// Goal: POSIX semantics through a real mount, checked by the same script an
/// admin can run against any directory (it passes on tmpfs and ext4).
final class PosixCheckTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    private func check(options: [String] = []) throws {
        let export = try MountedExport(self, options: options)
        let result = try runCommand("/usr/bin/python3", [repositoryRoot + "/mountscripts/posix-check", export.path])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains(" passed, 0 failed"), result.output)
    }

    func testPosixChecksPass() throws { try check() }

    func testPosixChecksPassWithWritebackCache() throws { try check(options: ["writeback_cache"]) }

    func testPosixChecksPassWithoutKernelCaching() throws { try check(options: ["attr_timeout=0", "entry_timeout=0"]) }
}

/// Goal: `mount -t fuse.baton` and an fstab line mount an export through the
/// helper, and `umount` unmounts it (the background mount then exits).
final class MountHelperTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
        // The helper goes where mount(8) looks, unless one is there already; removed afterwards.
        let link = "/sbin/mount.fuse.baton"
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == nil, !FileManager.default.fileExists(atPath: link) {
            let installed = try runCommand("/bin/bash", [repositoryRoot + "/mountscripts/install-mount-helper"])
            XCTAssertEqual(installed.status, 0, installed.output)
            addTeardownBlock { _ = try? runCommand("/bin/bash", [repositoryRoot + "/mountscripts/install-mount-helper", "--remove"]) }
        }
    }

    private func mounted(_ test: XCTestCase, _ mountpoint: String) {
        test.addTeardownBlock {
            if MountProcess.isMounted(mountpoint) { _ = try? runCommand("/bin/umount", ["-l", mountpoint]) }
        }
    }

    func testMountTypeFuseBatonAndFstab() throws {
        let directory = try temporaryDirectory(self)
        let server = try ServerProcess(self, export: "data", data: directory + "/data")
        let environment = ["BATON_BIN": BatonBinary.path]
        for (index, useFstab) in [false, true].enumerated() {
            let mountpoint = directory + "/mnt\(index)"
            try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            mounted(self, mountpoint)
            let result: CommandResult
            if useFstab {
                let fstab = directory + "/fstab"
                try "data@\(server.address) \(mountpoint) fuse.baton defaults,_netdev,timeout=5 0 0\n"
                    .write(toFile: fstab, atomically: true, encoding: .utf8)
                result = try runCommand("/bin/mount", ["-T", fstab, mountpoint], environment: environment)
            } else {
                result = try runCommand("/bin/mount", ["-t", "fuse.baton", "data@\(server.address)", mountpoint, "-o", "timeout=5"],
                                        environment: environment)
            }
            XCTAssertEqual(result.status, 0, result.output)
            XCTAssertTrue(MountProcess.isMounted(mountpoint), "not mounted (fstab: \(useFstab)): \(result.output)")
            XCTAssertTrue(FileManager.default.createFile(atPath: mountpoint + "/f\(index)", contents: Data("x".utf8)))
            let unmounted = try runCommand("/bin/umount", [mountpoint])
            XCTAssertEqual(unmounted.status, 0, unmounted.output)
            XCTAssertFalse(MountProcess.isMounted(mountpoint))
        }
    }
}

/// Issue 10: a mount in the background logs somewhere an admin finds it:
/// the file of `log_file=`, else the system log where one listens, else
/// /var/log/baton/mount-EXPORT.log; never nowhere.
final class BackgroundMountLogTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    /// Mounts in the background (no -f), writes a file, unmounts; returns once the mount has logged its end.
    private func mountAndUnmount(export: String, options: [String], log: String) throws {
        let directory = try temporaryDirectory(self)
        let server = try ServerProcess(self, export: export, data: directory + "/data")
        let mountpoint = directory + "/mnt"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        addTeardownBlock {
            if MountProcess.isMounted(mountpoint) { _ = try? runCommand("/bin/umount", ["-l", mountpoint]) }
        }
        let arguments = ["mount", "\(export)@\(server.address)", mountpoint] + (options.isEmpty ? [] : ["-o", options.joined(separator: ",")])
        let mounted = try runCommand(BatonBinary.path, arguments)
        XCTAssertEqual(mounted.status, 0, mounted.output)
        XCTAssertTrue(FileManager.default.createFile(atPath: mountpoint + "/f", contents: Data("x".utf8)))
        let unmounted = try runCommand("/bin/umount", [mountpoint])
        XCTAssertEqual(unmounted.status, 0, unmounted.output)
        let deadline = Date().addingTimeInterval(10)
        var text = ""
        while Date() < deadline {
            text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if text.contains("unmounted") { break }
            usleep(20_000)
        }
        XCTAssertTrue(text.contains("mounted") && text.contains("export=\(export)"), "log \(log): \(text)")
        XCTAssertTrue(text.contains("unmounted"), "log \(log): \(text)")
    }

    func testABackgroundMountLogsToItsLogFile() throws {
        let log = try temporaryDirectory(self) + "/mount.log"
        try mountAndUnmount(export: "logged", options: ["log_file=\(log)"], log: log)
    }

    func testABackgroundMountWithoutALogFileLogsToTheDefaultFileWhereNoSystemLogListens() throws {
        guard access(SyslogLogHandler.socketPath, W_OK) != 0 else {
            throw XCTSkip("a system log listens at /dev/log here: the mount logs there")
        }
        let export = "logdefault\(getpid())"
        let log = "/var/log/baton/mount-\(export).log"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: log) }
        try mountAndUnmount(export: export, options: [], log: log)
    }
}
