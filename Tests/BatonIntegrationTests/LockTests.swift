// Goal (issue 12): fcntl record locks and flock locks taken through one
// mount exclude those of another mount of the export, as on a local file
// system; a blocked F_SETLKW wakes when the holder lets go; a lock held
// across a failover is still held on the new server, and its waiter gets it
// only after the holder's release.
// Method: real mounts, and Python's fcntl module in real processes: one
// holds a lock until its stdin closes, others try, wait or ask F_GETLK.
import BatonCore
import Foundation
import XCTest

final class LockTests: XCTestCase {
    /// Two mounts of one server: each kind of lock excludes across them.
    func testLocksExcludeAcrossMountsAndAWaiterWakesOnRelease() throws {
        let bed = try LockBed(self, mounts: ["one", "two"])
        let (server, first, second, locker) = (bed.server, bed.mounts[0], bed.mounts[1], bed.locker)

        let holder = try locker.start("hold", first.mountpoint + "/db")
        try holder.waitForLine("locked")
        XCTAssertEqual(try locker.run("try", second.mountpoint + "/db"), "EAGAIN", "the second mount took a lock the first holds")
        XCTAssertEqual(try locker.run("holder", second.mountpoint + "/db"), "\(holder.pid)", "F_GETLK names the holder's pid")
        XCTAssertEqual(try locker.run("try-range", second.mountpoint + "/db"), "got", "bytes past the held range are free")
        XCTAssertEqual(try locker.run("ofd-try", second.mountpoint + "/db"), "EAGAIN", "an OFD lock ignored the other mount's record lock")
        let listing = try runCommand(BatonBinary.path, ["locks", "export", "--server", "\(server.address)"]).output
        XCTAssertTrue(listing.contains("/db ") && listing.contains("0-99 ") && listing.contains("exclusive") && listing.contains(" \(holder.pid) "),
                      "baton locks did not show the file, range, kind and pid:\n\(listing)")
        let waiter = try locker.start("wait", second.mountpoint + "/db")
        try waiter.waitUntilBlockedOnTheMount()
        holder.release()
        try waiter.waitForLine("got")
        XCTAssertEqual(try locker.run("try", first.mountpoint + "/db"), "EAGAIN", "the woken waiter holds the lock now")
        waiter.release()
        XCTAssertEqual(try locker.run("try", first.mountpoint + "/db"), "got", "a close releases the process's locks")

        let flockHolder = try locker.start("flock-hold", first.mountpoint + "/spool")
        try flockHolder.waitForLine("locked")
        XCTAssertEqual(try locker.run("flock-try", second.mountpoint + "/spool"), "EAGAIN")
        XCTAssertEqual(try locker.run("try", second.mountpoint + "/spool"), "got", "flock and fcntl locks do not exclude each other")
        flockHolder.release()
        XCTAssertEqual(try locker.run("flock-try", second.mountpoint + "/spool"), "got")
    }

    /// A client that dies holding a lock (its mount SIGKILLed: no close, no
    /// release) loses it once its session has had no connection for the
    /// lock lease, and the server logs which locks went.
    func testADeadClientsLocksAreReleasedAfterTheLease() throws {
        let bed = try LockBed(self, mounts: ["doomed", "survivor"], serverArguments: ["--lock-lease-ms", "1000"])
        let (server, doomed, survivor, locker) = (bed.server, bed.mounts[0], bed.mounts[1], bed.locker)
        let holder = try locker.start("hold", doomed.mountpoint + "/db")
        try holder.waitForLine("locked")
        XCTAssertEqual(try locker.run("try", survivor.mountpoint + "/db"), "EAGAIN")
        kill(doomed.process.processIdentifier, SIGKILL)
        doomed.process.waitUntilExit()
        let deadline = Date().addingTimeInterval(20)
        while try locker.run("try", survivor.mountpoint + "/db") != "got" {
            guard Date() < deadline else { return XCTFail("the dead client's lock was never released") }
            usleep(100_000)
        }
        XCTAssertEqual(server.terminate(), 0)
        let log = server.log
        XCTAssertTrue(log.contains("a client's locks released") && log.contains("/db: exclusive fcntl 0-99"), log)
    }

    /// A client that stops (its mount SIGSTOPped: the connection stays open,
    /// nothing is sent) loses its lock once it has not renewed it for the
    /// lease; the other mount's waiter is woken by that release. When the
    /// client goes on, its next lock request on the file answers EIO (it is
    /// told, never left believing it holds the lock) until it closes the file.
    func testAStoppedClientLosesItsLocksAfterTheLeaseAndIsToldWhenItComesBack() throws {
        let bed = try LockBed(self, mounts: ["stopped", "other"], serverArguments: ["--lock-lease-ms", "1000"])
        let (server, stopped, other, locker) = (bed.server, bed.mounts[0], bed.mounts[1], bed.locker)
        let holder = try locker.start("hold", stopped.mountpoint + "/db")
        try holder.waitForLine("locked")
        holder.askAgain()
        try holder.waitForLine("got")
        let waiter = try locker.start("wait", other.mountpoint + "/db")
        try waiter.waitUntilBlockedOnTheMount()

        kill(stopped.process.processIdentifier, SIGSTOP)
        defer { kill(stopped.process.processIdentifier, SIGCONT) }
        try waiter.waitForLine("got", timeout: 30)
        waiter.release()
        kill(stopped.process.processIdentifier, SIGCONT)
        holder.askAgain()
        let deadline = Date().addingTimeInterval(15)
        while holder.count("got") + holder.count("EIO") < 2 {
            guard Date() < deadline else { return XCTFail("the holder's second ask was not answered") }
            usleep(20_000)
        }
        XCTAssertEqual(holder.count("EIO"), 1, "a client that lost its lock to the lease was not told")
        holder.release()
        XCTAssertEqual(try locker.run("try", stopped.mountpoint + "/db"), "got", "closing the file did not end the lost mark")
        XCTAssertEqual(server.terminate(), 0)
        XCTAssertTrue(server.log.contains("was not heard from for the lock lease"), server.log)
    }

    /// The lock table is journaled: the new server after a SIGSTOP failover
    /// knows the lock at once (no grace period), and the waiter on the other
    /// client, sent again to the new server, gets it after the release.
    func testALockHeldAcrossAFailoverIsStillHeldAndItsWaiterWakesAfterTheRelease() throws {
        try checkALockIsHeldAcrossASwap("the failover") { cluster in
            let before = try XCTUnwrap(try cluster.server("demo"))
            kill(before.pid, SIGSTOP)
            try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        }
    }

    /// A lock held across a planned migration is still held on the new
    /// server, and the waiter gets it only after the holder's release.
    func testALockHeldAcrossAMigrationIsStillHeld() throws {
        try checkALockIsHeldAcrossASwap("the migration") { cluster in
            let before = try cluster.waitUntilReplicated("demo")
            let migrated = try cluster.admin(["migrate", "demo"])
            XCTAssertEqual(migrated.status, 0, migrated.output)
            try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        }
    }

    /// A holder on one mount and a waiter on another, then `swap`: the new
    /// server holds the lock (and `baton locks` shows it), the waiter still
    /// waits, and gets the lock once the holder lets go.
    private func checkALockIsHeldAcrossASwap(_ swap: String, _ perform: (TwoNodeCluster) throws -> Void) throws {
        let cluster = try TwoNodeCluster(self)
        let first = try cluster.mount(self, "demo", mountpoint: "one")
        let second = try cluster.mount(self, "demo", mountpoint: "two")
        let locker = try LockScript(self, in: cluster.directory)
        let holder = try locker.start("hold", first.mountpoint + "/db")
        try holder.waitForLine("locked")
        let waiter = try locker.start("wait", second.mountpoint + "/db")
        try waiter.waitUntilBlockedOnTheMount()
        let epoch = try XCTUnwrap(try cluster.server("demo")).epoch
        try perform(cluster)
        XCTAssertEqual(try locker.run("try", second.mountpoint + "/db"), "EAGAIN", "\(swap) lost the lock")
        let listing = try cluster.admin(["locks", "demo"]).output
        XCTAssertTrue(listing.contains("epoch \(epoch + 1)") && listing.contains("/db "), "baton locks after \(swap):\n\(listing)")
        XCTAssertTrue(waiter.isRunning, "the waiter got the lock while its holder held it")
        holder.release()
        try waiter.waitForLine("got", timeout: 30)
    }
}

extension LockTests {
    /// Three clients: one holds, two wait; each release lets exactly one in.
    func testThreeMountsTakeTheLockInTurn() throws {
        let bed = try LockBed(self, mounts: ["one", "two", "three"])
        let (mounts, locker) = (bed.mounts, bed.locker)
        let holder = try locker.start("hold", mounts[0].mountpoint + "/db")
        try holder.waitForLine("locked")
        let waiters = try mounts[1...].map { try locker.start("wait", $0.mountpoint + "/db") }
        for waiter in waiters { try waiter.waitUntilBlockedOnTheMount() }
        holder.release()
        let deadline = Date().addingTimeInterval(15)
        while waiters.filter({ $0.count("got") == 1 }).isEmpty {
            guard Date() < deadline else { return XCTFail("no waiter got the released lock") }
            usleep(20_000)
        }
        let first = try XCTUnwrap(waiters.first { $0.count("got") == 1 })
        let second = try XCTUnwrap(waiters.first { $0 !== first })
        XCTAssertTrue(second.isRunning && second.count("got") == 0, "two clients hold one exclusive lock")
        XCTAssertEqual(try locker.run("try", mounts[0].mountpoint + "/db"), "EAGAIN")
        first.release()
        try second.waitForLine("got")
        second.release()
        XCTAssertEqual(try locker.run("try", mounts[2].mountpoint + "/db"), "got")
    }

    /// A process that takes a signal while it waits for a lock stops waiting
    /// (EINTR, as on a local file system: Python raises KeyboardInterrupt),
    /// and its wait is gone at the server: the holder's release lets in the next ask.
    func testASignalEndsALockWait() throws {
        let bed = try LockBed(self, mounts: ["one", "two"])
        let (first, second, locker) = (bed.mounts[0], bed.mounts[1], bed.locker)
        let holder = try locker.start("hold", first.mountpoint + "/db")
        try holder.waitForLine("locked")
        let waiter = try locker.start("wait", second.mountpoint + "/db")
        try waiter.waitUntilBlockedOnTheMount()
        kill(waiter.pid, SIGINT)
        let deadline = Date().addingTimeInterval(15)
        while waiter.isRunning {
            guard Date() < deadline else { return XCTFail("a signal did not end the lock wait") }
            usleep(20_000)
        }
        XCTAssertEqual(waiter.count("got"), 0, "the interrupted wait got the lock")
        holder.release()
        XCTAssertEqual(try locker.run("try", second.mountpoint + "/db"), "got", "the interrupted wait was granted to nobody")
    }

    /// A lock promises what the last holder wrote: a client that read the
    /// file (its kernel caches the pages) and then takes the lock sees
    /// another client's change made under the lock, not its cached pages.
    func testALockTakenSeesWhatTheLastHolderWrote() throws {
        let bed = try LockBed(self, mounts: ["reader", "writer"])
        let (reader, writer, locker) = (bed.mounts[0], bed.mounts[1], bed.locker)
        try "old contents".write(toFile: writer.mountpoint + "/shared", atomically: false, encoding: .utf8)
        let reading = try locker.start("read-lock-read", reader.mountpoint + "/shared")
        try reading.waitForLine("read old contents")
        XCTAssertEqual(try locker.run("lock-write", writer.mountpoint + "/shared"), "wrote")
        reading.askAgain()
        try reading.waitForLine("locked")
        XCTAssertEqual(reading.count("read new contents"), 1, "the lock holder read stale cached pages")
        reading.release()
    }

    /// SQLite keeps its database consistent with locks: two writers on two
    /// mounts in rollback-journal mode, and in WAL mode two writers on one
    /// mount (WAL needs memory shared by every connection, which no network
    /// file system gives across machines; SQLite says so for NFS) with a
    /// reader on the other mount afterwards. Every row is there and
    /// `integrity_check` passes.
    func testSQLiteWritersOnTwoMountsKeepTheDatabaseWhole() throws {
        let bed = try LockBed(self, mounts: ["one", "two"])
        let (one, two) = (bed.mounts[0], bed.mounts[1])
        let script = bed.directory + "/writer.py"
        try """
            import sqlite3, sys
            path, mode, who, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
            db = sqlite3.connect(path, timeout=120, isolation_level=None)
            db.execute("PRAGMA journal_mode=%s" % mode).fetchone()
            db.execute("CREATE TABLE IF NOT EXISTS t (who TEXT, i INTEGER, pad TEXT)")
            if who == "check":
                print(db.execute("PRAGMA integrity_check").fetchone()[0], db.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
                sys.exit(0)
            for i in range(n):
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO t VALUES (?, ?, ?)", (who, i, "x" * 300))
                db.execute("COMMIT")
            print("done", flush=True)
            """.write(toFile: script, atomically: true, encoding: .utf8)
        func writers(_ mode: String, _ file: String, on mounts: [MountProcess]) throws {
            // Made first, alone: two writers creating one database at once is not what this checks.
            XCTAssertEqual(try runCommand("/usr/bin/python3", [script, mounts[0].mountpoint + "/" + file, mode, "check", "0"]).output, "ok 0\n")
            let processes = try mounts.enumerated().map { index, mount in
                try LockingProcess(self, ["/usr/bin/python3", script, mount.mountpoint + "/" + file, mode, "w\(index)", "200"])
            }
            for process in processes { try process.waitForLine("done", timeout: 120) }
        }
        try writers("DELETE", "rollback.db", on: [one, two])
        XCTAssertEqual(try runCommand("/usr/bin/python3", [script, two.mountpoint + "/rollback.db", "DELETE", "check", "0"]).output,
                       "ok 400\n")
        try writers("WAL", "wal.db", on: [one, one])
        XCTAssertEqual(try runCommand("/usr/bin/python3", [script, two.mountpoint + "/wal.db", "WAL", "check", "0"]).output, "ok 400\n")
    }
}

/// One export server, mounts of it by name, and the lock helper, in a temporary directory.
private struct LockBed {
    let directory: String
    let server: ServerProcess
    let mounts: [MountProcess]
    let locker: LockScript

    init(_ test: XCTestCase, mounts names: [String], serverArguments: [String] = []) throws {
        directory = try temporaryDirectory(test)
        server = try ServerProcess(test, export: "export", data: directory + "/data", extraArguments: serverArguments)
        let address = server.address
        mounts = try names.map { [directory] in try MountProcess(test, source: "export@\(address)", mountpoint: directory + "/" + $0) }
        locker = try LockScript(test, in: directory)
    }
}

/// A Python helper that takes locks: `hold` and `flock-hold` lock the file
/// and keep it until stdin closes; `wait` blocks in F_SETLKW; `try` and
/// `flock-try` answer "got" or "EAGAIN"; `holder` prints F_GETLK's pid.
private struct LockScript {
    let path: String
    let test: XCTestCase

    init(_ test: XCTestCase, in directory: String) throws {
        self.test = test
        path = directory + "/locker.py"
        try """
            import errno, fcntl, os, struct, sys
            mode, path = sys.argv[1], sys.argv[2]
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            def attempt(take):
                try:
                    take()
                    print("got", flush=True)
                except BlockingIOError:
                    print("EAGAIN", flush=True)
                except OSError as error:
                    print(errno.errorcode[error.errno], flush=True)
            if mode == "hold":
                fcntl.lockf(fd, fcntl.LOCK_EX, 100)
                print("locked", flush=True)
                # Each line asks again for the lock it holds (or held: the lease may have taken it).
                for line in sys.stdin:
                    attempt(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100))
            elif mode == "flock-hold":
                fcntl.flock(fd, fcntl.LOCK_EX)
                print("locked", flush=True)
                sys.stdin.read()
            elif mode == "wait":
                print("waiting", flush=True)
                fcntl.lockf(fd, fcntl.LOCK_EX, 100)
                print("got", flush=True)
                sys.stdin.read()
            elif mode == "try":
                attempt(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100))
            elif mode == "try-range":
                attempt(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 100))
            elif mode == "ofd-try":
                ask = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 100, 0)
                attempt(lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, ask))
            elif mode == "flock-try":
                attempt(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
            elif mode == "read-lock-read":
                print("read", os.pread(fd, 100, 0).decode(), flush=True)
                sys.stdin.readline()
                fcntl.lockf(fd, fcntl.LOCK_SH)
                print("locked", flush=True)
                print("read", os.pread(fd, 100, 0).decode(), flush=True)
                sys.stdin.read()
            elif mode == "lock-write":
                fcntl.lockf(fd, fcntl.LOCK_EX)
                os.pwrite(fd, b"new contents", 0)
                fcntl.lockf(fd, fcntl.LOCK_UN)
                print("wrote", flush=True)
            elif mode == "holder":
                asked = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 100, 0)
                kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, asked))
                print("none" if kind == fcntl.F_UNLCK else pid, flush=True)
            """.write(toFile: path, atomically: true, encoding: .utf8)
    }

    func run(_ mode: String, _ file: String) throws -> String {
        try runCommand("/usr/bin/python3", [path, mode, file]).output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func start(_ mode: String, _ file: String) throws -> LockingProcess {
        try LockingProcess(test, ["/usr/bin/python3", path, mode, file])
    }
}

/// A process that holds its lock until `release` closes its stdin; ended by PID at teardown.
private final class LockingProcess: @unchecked Sendable {
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let lines = NSLock()
    private var seen = ""
    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    init(_ test: XCTestCase, _ command: [String]) throws {
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lines.withLock { self.seen += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
        test.addTeardownBlock { [self] in
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            // A process in a lock wait the mount never answers dies only with the mount, whose teardown comes later.
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning, Date() < deadline { usleep(20_000) }
            output.fileHandleForReading.readabilityHandler = nil
        }
    }

    func waitForLine(_ line: String, timeout: TimeInterval = 15) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !lines.withLock({ seen.split(separator: "\n").contains(Substring(line)) }) {
            // Ended without it (its last output may still be on the way: one more look).
            if !process.isRunning {
                usleep(100_000)
                if lines.withLock({ seen.split(separator: "\n").contains(Substring(line)) }) { return }
                throw TestError("ended without '\(line)'; output: \(lines.withLock { seen })")
            }
            guard Date() < deadline else { throw TestError("no '\(line)' within \(timeout) s; output: \(lines.withLock { seen })") }
            usleep(20_000)
        }
    }

    /// Until the process sleeps in the kernel on a FUSE request (its F_SETLKW is with the mount, and so the server).
    func waitUntilBlockedOnTheMount(timeout: TimeInterval = 15) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let channel = (try? String(contentsOfFile: "/proc/\(pid)/wchan", encoding: .utf8)) ?? ""
            if channel.contains("request_wait_answer") || channel.contains("fuse") { return }
            guard process.isRunning else { throw TestError("the waiter ended instead of waiting: \(lines.withLock { seen })") }
            guard Date() < deadline else { throw TestError("the waiter never blocked on the mount (wchan '\(channel)')") }
            usleep(20_000)
        }
    }

    /// A line on stdin: a `hold` helper asks again for its lock and prints the outcome.
    func askAgain() {
        input.fileHandleForWriting.write(Data("again\n".utf8))
    }

    /// How often `line` was printed so far.
    func count(_ line: String) -> Int {
        lines.withLock { seen.split(separator: "\n").filter { $0 == Substring(line) }.count }
    }

    /// Closes stdin: the helper exits, and its close releases its locks.
    func release() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}
