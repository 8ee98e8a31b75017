// Goal: writes answered before the server has them (write-behind) are never
// lost and never fail silently: a failed one is reported by the file's
// fsync or close, and a mount stopped with writes in flight delivers them
// before it exits.
// Method: `baton serve` and `baton mount -f` as processes; the server's data
// on a small tmpfs to make writes fail with ENOSPC; SIGSTOP of the server to
// hold writes in flight while the mount is told to stop.
import Foundation
import XCTest

final class WriteBehindMountTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    /// Writes 1 MiB blocks until one fails, then fsyncs and closes; prints
    /// where the first error showed ("write N", "fsync" or "close") and its errno.
    private static let fillScript = """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
        block = b"b" * (1 << 20)
        def report(step, error):
            print(step, error.errno); sys.exit(0)
        for n in range(int(sys.argv[2])):
            try: os.write(fd, block)
            except OSError as e: report("write %d" % n, e)
        try: os.fsync(fd)
        except OSError as e: report("fsync", e)
        try: os.close(fd)
        except OSError as e: report("close", e)
        print("no error")
        """

    func testAWriteFailingAfterItsAnswerIsReportedBeforeTheFileIsDone() throws {
        let directory = try temporaryDirectory(self)
        // The journal's first segment and its spare (32 MiB each) fit; the file data does not.
        let small = try smallDisk(self, in: directory, size: "72m")
        let server = try ServerProcess(self, export: "x", data: small + "/data")
        let mount = try MountProcess(self, source: "x@\(server.address)", mountpoint: directory + "/mnt",
                                     options: ["write_behind=8M"])
        try Self.fillScript.write(toFile: directory + "/fill.py", atomically: true, encoding: .utf8)
        let result = try runCommand("/usr/bin/python3", [directory + "/fill.py", mount.mountpoint + "/big", "64"])
        XCTAssertEqual(result.status, 0, result.output)
        let words = result.output.split(separator: "\n").last?.split(separator: " ") ?? []
        XCTAssertEqual(words.last.flatMap { Int32($0) }, ENOSPC,
                       "a disk too small for 64 MiB must fail the job, at a write, fsync or close: \(result.output)")
    }

    func testAMountStoppedWithWritesInFlightDeliversThemFirst() throws {
        // The kernel asks for security.capability before a file's first write;
        // the mount remembers the answer for attr_timeout.
        let export = try MountedExport(self, options: ["write_behind=8M", "attr_timeout=60"])
        let file = export.path + "/held"
        let content = Data((0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.write(contentsOf: content.prefix(1))
        try handle.seek(toOffset: 0)
        // The server answers nothing while stopped: the writes stay in flight.
        kill(export.server.process.processIdentifier, SIGSTOP)
        defer { kill(export.server.process.processIdentifier, SIGCONT) }
        try handle.write(contentsOf: content)
        // Closing would wait for the writes; stop the mount with them in flight.
        kill(export.mount.process.processIdentifier, SIGTERM)
        usleep(300_000)
        XCTAssertTrue(export.mount.process.isRunning, "the mount exited with writes in flight")
        kill(export.server.process.processIdentifier, SIGCONT)
        export.mount.process.waitUntilExit()
        try? handle.close()
        let again = try MountProcess(self, source: "\(export.exportName)@\(export.server.address)",
                                     mountpoint: export.directory + "/mnt2")
        XCTAssertEqual(FileManager.default.contents(atPath: again.mountpoint + "/held"), content)
    }
}
