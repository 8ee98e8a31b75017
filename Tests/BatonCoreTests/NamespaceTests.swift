// Goal: the namespace state machine gives POSIX answers and is deterministic.
// Method: drive it with operations as journal records, with a hand-advanced
// clock; check replies, attributes and that a replay of the records rebuilds
// the same state (identity carried by the journal, DESIGN.md §3).
@testable import BatonCore
import XCTest

final class NamespaceTests: XCTestCase {
    func testCreateLookupAndAttributes() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("a", mode: 0o640)
        guard case .entry(let a) = d.lookup("a") else { return XCTFail("lookup") }
        XCTAssertEqual(a.inode, ino)
        XCTAssertEqual(a.mode, Mode.regular | 0o640)
        XCTAssertEqual(a.linkCount, 1)
        XCTAssertEqual(a.mtime, d.clock)
        XCTAssertEqual(d.lookup("missing"), .error(.ENOENT))
    }

    func testExclusiveCreateOfExistingNameFails() {
        var d = NamespaceDriver()
        _ = d.create("a")
        d.fails(.create(parent: rootInode, name: FileName("a"), mode: 0o644,
                        flags: OpenFlags.create | OpenFlags.exclusive | OpenFlags.readWrite, .root), .EEXIST)
    }

    func testNameMaxIsEnforced() {
        var d = NamespaceDriver()
        let long = String(repeating: "x", count: 256)
        d.fails(.mkdir(parent: rootInode, name: FileName(long), mode: 0o755, .root), .ENAMETOOLONG)
        _ = d.mkdir(String(repeating: "y", count: 255))
    }

    func testWriteGrowsSizeAndAppendUsesServerSize() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("log")
        XCTAssertEqual(try d.namespace.writeOffset(ino, handle: handle, offset: 0, count: 10), 0)
        XCTAssertEqual(d.apply(.write(ino, handle: handle, offset: 0, data: Array(repeating: 1, count: 10))).reply, .written(count: 10))
        XCTAssertEqual(d.attributes(ino).size, 10)
        guard case .opened(let appender) = d.ok(.open(ino, flags: OpenFlags.writeOnly | OpenFlags.append)) else { return XCTFail() }
        // The client thinks the file is empty; O_APPEND must still land at the end.
        XCTAssertEqual(try d.namespace.writeOffset(ino, handle: appender, offset: 0, count: 2), 10)
        _ = d.ok(.write(ino, handle: appender, offset: 0, data: [9, 9]))
        XCTAssertEqual(d.attributes(ino).size, 12)
    }

    /// The local journal keeps a write's byte count, not its data; replaying
    /// such a record gives the same sizes and times.
    func testWriteRecordWithoutDataReplaysTheSame() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("f")
        d.tick()
        _ = d.ok(.write(ino, handle: handle, offset: 100, data: Array(repeating: 7, count: 50)))
        var stripped = Namespace()
        for record in d.records { _ = stripped.apply(record.withoutWriteData) }
        XCTAssertEqual(stripped, d.namespace)
        XCTAssertEqual(stripped.attributes(of: ino)?.size, 150)
    }

    func testWriteBeyondTheSizeLimitIsEFBIG() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("f")
        XCTAssertThrowsError(try d.namespace.writeOffset(ino, handle: handle, offset: Namespace.maxFileSizeBytes, count: 1))
        d.fails(.write(ino, handle: handle, offset: Namespace.maxFileSizeBytes, data: [1]), .EFBIG)
    }

    func testWriteThroughReadOnlyHandleIsRefused() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("a")
        guard case .opened(let readOnly) = d.ok(.open(ino, flags: 0)) else { return XCTFail() }
        d.fails(.write(ino, handle: readOnly, offset: 0, data: [1]), .EBADF)
        d.fails(.write(ino, handle: 999, offset: 0, data: [1]), .EBADF)
    }

    func testTruncateShrinksAndGrowsSparse() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("f")
        d.tick()
        let grown = d.apply(.setattr(ino, AttributeChanges(size: 5 << 30), .root))
        XCTAssertEqual(grown.effects, [.truncate(ino, size: 5 << 30)])
        XCTAssertEqual(d.attributes(ino).size, 5 << 30)
        XCTAssertEqual(d.attributes(ino).mtime, d.clock)
        _ = d.ok(.setattr(ino, AttributeChanges(size: 3), .root))
        XCTAssertEqual(d.attributes(ino).size, 3)
        let dir = d.mkdir("d")
        d.fails(.setattr(dir, AttributeChanges(size: 0), .root), .EISDIR)
    }

    func testOpenWithTruncate() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("f")
        _ = d.ok(.write(ino, handle: handle, offset: 0, data: [1, 2, 3]))
        let outcome = d.apply(.open(ino, flags: OpenFlags.writeOnly | OpenFlags.truncate))
        XCTAssertEqual(outcome.effects, [.truncate(ino, size: 0)])
        XCTAssertEqual(d.attributes(ino).size, 0)
    }

    func testMkdirRmdirAndLinkCounts() {
        var d = NamespaceDriver()
        let a = d.mkdir("a")
        let b = d.mkdir("b", in: a)
        XCTAssertEqual(d.attributes(rootInode).linkCount, 3)
        XCTAssertEqual(d.attributes(a).linkCount, 3)
        d.fails(.rmdir(parent: rootInode, name: FileName("a")), .ENOTEMPTY)
        _ = d.ok(.rmdir(parent: a, name: FileName("b")))
        XCTAssertTrue(d.namespace.isOrphan(b), "a removed directory stays until the kernel forgets it")
        _ = d.ok(.forget(b))
        XCTAssertNil(d.namespace.attributes(of: b))
        XCTAssertEqual(d.attributes(a).linkCount, 2)
        _ = d.ok(.rmdir(parent: rootInode, name: FileName("a")))
        XCTAssertEqual(d.attributes(rootInode).linkCount, 2)
        _ = d.create("f")
        d.fails(.rmdir(parent: rootInode, name: FileName("f")), .ENOTDIR)
        d.fails(.unlink(parent: rootInode, name: FileName("missing")), .ENOENT)
    }

    /// A removed directory that is still a working directory: stat and
    /// readdir work, creating in it is ENOENT (POSIX rmdir).
    func testRemovedDirectoryTakesNoNewEntries() {
        var d = NamespaceDriver()
        let dir = d.mkdir("gone")
        _ = d.ok(.rmdir(parent: rootInode, name: FileName("gone")))
        XCTAssertEqual(d.attributes(dir).linkCount, 0)
        XCTAssertEqual(d.names(in: dir), [".", ".."])
        d.fails(.mkdir(parent: dir, name: FileName("x"), mode: 0o755, .root), .ENOENT)
        d.fails(.create(parent: dir, name: FileName("f"), mode: 0o644, flags: OpenFlags.readWrite, .root), .ENOENT)
    }

    func testForgetOfANamedInodeChangesNothing() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("kept")
        let before = d.namespace
        _ = d.apply(.forget(ino))
        XCTAssertNotNil(d.namespace.attributes(of: ino))
        XCTAssertEqual(d.names(in: rootInode), NamespaceDriver(namespace: before).names(in: rootInode))
    }

    func testUnlinkOfDirectoryIsEISDIR() {
        var d = NamespaceDriver()
        _ = d.mkdir("a")
        d.fails(.unlink(parent: rootInode, name: FileName("a")), .EISDIR)
    }

    func testHardLinksCountAndSurviveUnlinkOfOneName() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("a")
        _ = d.ok(.release(ino, handle: handle))
        _ = d.ok(.link(ino, newParent: rootInode, newName: FileName("b")))
        XCTAssertEqual(d.attributes(ino).linkCount, 2)
        let outcome = d.apply(.unlink(parent: rootInode, name: FileName("a")))
        XCTAssertEqual(outcome.effects, [])
        XCTAssertEqual(d.attributes(ino).linkCount, 1)
        XCTAssertEqual(d.apply(.unlink(parent: rootInode, name: FileName("b"))).effects, [])
        XCTAssertEqual(d.apply(.forget(ino)).effects, [.remove(ino)])
        XCTAssertNil(d.namespace.attributes(of: ino))
        let dir = d.mkdir("d")
        d.fails(.link(dir, newParent: rootInode, newName: FileName("e")), .EPERM)
    }

    /// DESIGN.md §4.4: unlinked-but-open files keep their data until the last close.
    func testUnlinkedOpenFileKeepsDataUntilLastClose() {
        var d = NamespaceDriver()
        let (ino, first) = d.create("f")
        guard case .opened(let second) = d.ok(.open(ino, flags: 0)) else { return XCTFail() }
        _ = d.ok(.write(ino, handle: first, offset: 0, data: [1, 2, 3]))
        XCTAssertEqual(d.apply(.unlink(parent: rootInode, name: FileName("f"))).effects, [])
        XCTAssertEqual(d.lookup("f"), .error(.ENOENT))
        XCTAssertEqual(d.namespace.query(.getattr(ino)), .attributes(d.attributes(ino)))
        XCTAssertEqual(d.attributes(ino).linkCount, 0)
        XCTAssertEqual(try d.namespace.readableSize(ino), 3)
        XCTAssertEqual(d.apply(.forget(ino)).effects, [], "an open file is not freed by a forget")
        XCTAssertEqual(d.apply(.release(ino, handle: first)).effects, [])
        XCTAssertEqual(d.apply(.release(ino, handle: second)).effects, [])
        XCTAssertEqual(d.namespace.query(.getattr(ino)).isError, false, "the kernel may still hold it (O_PATH, cwd)")
        XCTAssertEqual(d.apply(.forget(ino)).effects, [.remove(ino)])
        XCTAssertEqual(d.namespace.query(.getattr(ino)), .error(.ESTALE), "a freed inode is stale, so a kernel with a name for it looks again")
    }

    func testRenameOverFileAndEmptyDirectory() {
        var d = NamespaceDriver()
        let (a, ha) = d.create("a")
        let (b, hb) = d.create("b")
        _ = d.ok(.release(a, handle: ha))
        _ = d.ok(.release(b, handle: hb))
        _ = d.ok(.rename(parent: rootInode, name: FileName("a"), newParent: rootInode, newName: FileName("b"), flags: 0))
        XCTAssertTrue(d.namespace.isOrphan(b))
        XCTAssertEqual(d.apply(.forget(b)).effects, [.remove(b)])
        guard case .entry(let entry) = d.lookup("b") else { return XCTFail() }
        XCTAssertEqual(entry.inode, a)
        let x = d.mkdir("x")
        _ = d.mkdir("y")
        _ = d.ok(.rename(parent: rootInode, name: FileName("x"), newParent: rootInode, newName: FileName("y"), flags: 0))
        guard case .entry(let y) = d.lookup("y") else { return XCTFail() }
        XCTAssertEqual(y.inode, x)
        XCTAssertEqual(d.attributes(rootInode).linkCount, 3)
    }

    func testRenameErrors() {
        var d = NamespaceDriver()
        let x = d.mkdir("x")
        let inner = d.mkdir("inner", in: x)
        _ = d.mkdir("full")
        _ = d.mkdir("keep", in: d.mkdirLookup("full"))
        _ = d.create("f")
        let rename = { (p: InodeNumber, n: String, np: InodeNumber, nn: String, f: UInt32) in
            Operation.rename(parent: p, name: FileName(n), newParent: np, newName: FileName(nn), flags: f)
        }
        d.fails(rename(rootInode, "x", inner, "x2", 0), .EINVAL) // into itself
        d.fails(rename(rootInode, "x", x, "x2", 0), .EINVAL)
        d.fails(rename(rootInode, "x", rootInode, "full", 0), .ENOTEMPTY)
        d.fails(rename(rootInode, "x", rootInode, "f", 0), .ENOTDIR)
        d.fails(rename(rootInode, "f", rootInode, "x", 0), .EISDIR)
        d.fails(rename(rootInode, "f", rootInode, "x", RenameFlags.noReplace), .EEXIST)
        d.fails(rename(rootInode, "f", rootInode, "nothing", RenameFlags.exchange), .ENOENT)
        d.fails(rename(rootInode, "f", rootInode, "x", RenameFlags.exchange | RenameFlags.noReplace), .EINVAL)
        d.fails(rename(rootInode, "missing", rootInode, "z", 0), .ENOENT)
    }

    func testRenameExchangeSwapsAcrossDirectories() {
        var d = NamespaceDriver()
        let a = d.mkdir("a")
        let b = d.mkdir("b")
        let sub = d.mkdir("sub", in: a)
        let (f, _) = d.create("f", in: b)
        _ = d.ok(.rename(parent: a, name: FileName("sub"), newParent: b, newName: FileName("f"), flags: RenameFlags.exchange))
        guard case .entry(let inB) = d.lookup("f", in: b), case .entry(let inA) = d.lookup("sub", in: a) else { return XCTFail() }
        XCTAssertEqual(inB.inode, sub)
        XCTAssertEqual(inA.inode, f)
        XCTAssertEqual(d.attributes(a).linkCount, 2)
        XCTAssertEqual(d.attributes(b).linkCount, 3)
        XCTAssertEqual(d.lookup("..", in: sub), .entry(d.attributes(b)))
    }

    func testRenameOfHardLinkToItselfDoesNothing() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("a")
        _ = d.ok(.link(ino, newParent: rootInode, newName: FileName("b")))
        _ = d.ok(.rename(parent: rootInode, name: FileName("a"), newParent: rootInode, newName: FileName("b"), flags: 0))
        XCTAssertEqual(d.names(in: rootInode), [".", "..", "a", "b"])
        XCTAssertEqual(d.attributes(ino).linkCount, 2)
    }

    func testSymlinkAndReadlink() {
        var d = NamespaceDriver()
        guard case .entry(let link) = d.ok(.symlink(parent: rootInode, name: FileName("l"), target: Array("target/x".utf8), .root)) else {
            return XCTFail()
        }
        XCTAssertEqual(link.mode, Mode.symlink | 0o777)
        XCTAssertEqual(link.size, 8)
        XCTAssertEqual(d.namespace.query(.readlink(link.inode)), .bytes(Array("target/x".utf8)))
        XCTAssertEqual(d.namespace.query(.readlink(rootInode)), .error(.EINVAL))
    }

    func testMknodMakesFifosAndRefusesDirectories() {
        var d = NamespaceDriver()
        guard case .entry(let fifo) = d.ok(.mknod(parent: rootInode, name: FileName("p"), mode: Mode.fifo | 0o600, rdev: 0, .root)) else {
            return XCTFail()
        }
        XCTAssertEqual(Mode.type(fifo.mode), Mode.fifo)
        d.fails(.mknod(parent: rootInode, name: FileName("d"), mode: Mode.directory | 0o755, rdev: 0, .root), .EINVAL)
    }

    func testSetGIDDirectoryPassesGroupAndBit() {
        var d = NamespaceDriver()
        let shared = d.mkdir("shared", mode: 0o2775)
        _ = d.ok(.setattr(shared, AttributeChanges(gid: 50), .root))
        let user = Caller(uid: 1000, gid: 1000)
        guard case .entry(let sub) = d.ok(.mkdir(parent: shared, name: FileName("sub"), mode: 0o755, user)) else { return XCTFail() }
        XCTAssertEqual(sub.gid, 50)
        XCTAssertEqual(sub.mode & Mode.setGID, Mode.setGID)
        let (file, _) = d.create("f", in: shared, mode: 0o2755, caller: user)
        XCTAssertEqual(d.attributes(file).gid, 50)
        XCTAssertEqual(d.attributes(file).mode & Mode.setGID, 0, "a non-member may not create a setgid file")
    }

    func testChownClearsSetUIDAndSetGID() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("f", mode: 0o6755)
        _ = d.ok(.setattr(ino, AttributeChanges(uid: 1000), .root))
        XCTAssertEqual(d.attributes(ino).mode & 0o7777, 0o755)
        XCTAssertEqual(d.attributes(ino).uid, 1000)
    }

    func testChmodByNonMemberClearsSetGID() {
        var d = NamespaceDriver()
        let owner = Caller(uid: 1000, gid: 1000)
        let (ino, _) = d.create("f", mode: 0o644, caller: owner)
        _ = d.ok(.setattr(ino, AttributeChanges(gid: 2000), .root))
        _ = d.ok(.setattr(ino, AttributeChanges(mode: 0o2755), owner))
        XCTAssertEqual(d.attributes(ino).mode & 0o7777, 0o755)
        _ = d.ok(.setattr(ino, AttributeChanges(mode: 0o2755), .root))
        XCTAssertEqual(d.attributes(ino).mode & 0o7777, 0o2755)
    }

    func testUtimensNowAndSetAndCtime() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("f")
        d.tick(5)
        let old = Timestamp(seconds: 42, nanoseconds: 7)
        _ = d.ok(.setattr(ino, AttributeChanges(atime: .set(old), mtime: .now), .root))
        XCTAssertEqual(d.attributes(ino).atime, old)
        XCTAssertEqual(d.attributes(ino).mtime, d.clock)
        XCTAssertEqual(d.attributes(ino).ctime, d.clock)
    }

    func testDirectoryTimesChangeOnEntryChanges() {
        var d = NamespaceDriver()
        let dir = d.mkdir("d")
        d.tick()
        _ = d.create("f", in: dir)
        XCTAssertEqual(d.attributes(dir).mtime, d.clock)
        d.tick()
        _ = d.ok(.unlink(parent: dir, name: FileName("f")))
        XCTAssertEqual(d.attributes(dir).ctime, d.clock)
    }

    func testExtendedAttributes() {
        var d = NamespaceDriver()
        let (ino, _) = d.create("f")
        let name = FileName("user.color")
        _ = d.ok(.setxattr(ino, name: name, value: Array("blue".utf8), flags: XattrFlags.create))
        d.fails(.setxattr(ino, name: name, value: [1], flags: XattrFlags.create), .EEXIST)
        d.fails(.setxattr(ino, name: FileName("user.none"), value: [1], flags: XattrFlags.replace), .ENODATA)
        d.fails(.setxattr(ino, name: FileName("bogus.x"), value: [1], flags: 0), .EOPNOTSUPP)
        XCTAssertEqual(d.namespace.query(.getxattr(ino, name: name, size: 0)), .size(4))
        XCTAssertEqual(d.namespace.query(.getxattr(ino, name: name, size: 2)), .error(.ERANGE))
        XCTAssertEqual(d.namespace.query(.getxattr(ino, name: name, size: 100)), .bytes(Array("blue".utf8)))
        _ = d.ok(.setxattr(ino, name: FileName("user.a"), value: [], flags: 0))
        XCTAssertEqual(d.namespace.query(.listxattr(ino, size: 100)), .bytes(Array("user.a\0user.color\0".utf8)))
        _ = d.ok(.removexattr(ino, name: name))
        d.fails(.removexattr(ino, name: name), .ENODATA)
        XCTAssertEqual(d.namespace.query(.getxattr(ino, name: name, size: 0)), .error(.ENODATA))
    }

    /// Readdir stays correct while entries are added and removed: every entry
    /// present throughout is listed exactly once, none twice.
    func testReaddirIsStableWhileEntriesChange() {
        var d = NamespaceDriver()
        let dir = d.mkdir("d")
        for i in 0..<300 { _ = d.create("f\(i)", in: dir) }
        var seen: [String] = []
        var cookie: UInt64 = 0
        var step = 0
        while case .directory(let entries) = d.namespace.query(.readdir(dir, cookie: cookie, maxBytes: 512)), !entries.isEmpty {
            seen += entries.map(\.name.description)
            cookie = entries.last!.cookie
            // Between pages: remove an entry already listed, one not yet listed, add a new one.
            guard step < 100 else { continue }
            _ = d.ok(.unlink(parent: dir, name: FileName("f\(step)")))
            _ = d.ok(.unlink(parent: dir, name: FileName("f\(299 - step)")))
            _ = d.create("new\(step)", in: dir)
            step += 1
        }
        XCTAssertEqual(Set(seen).count, seen.count, "an entry was listed twice")
        let survivors = (100..<200).map { "f\($0)" }
        XCTAssertTrue(Set(survivors).isSubset(of: Set(seen)), "an entry present throughout was skipped")
        XCTAssertEqual(seen.prefix(2), [".", ".."])
    }

    /// DESIGN.md §4.3: a re-sent mutation gets its first reply from the cache,
    /// also after a replay of the journal (a restart or a promotion).
    func testReplyCacheAnswersResentMutationAfterReplay() {
        var d = NamespaceDriver()
        let reply = d.apply(.create(parent: rootInode, name: FileName("once"), mode: 0o644,
                                    flags: OpenFlags.readWrite | OpenFlags.exclusive, .root), request: 41).reply
        let replayed = d.replayed()
        XCTAssertEqual(replayed.cachedReply(session: d.session, request: 41), reply)
        XCTAssertNil(replayed.cachedReply(session: d.session, request: 40))
        XCTAssertNil(replayed.cachedReply(session: 99, request: 41))
    }

    func testReplyCacheForgetsWhatTheClientHas() {
        var d = NamespaceDriver()
        _ = d.mkdir("a")
        _ = d.mkdir("b")
        d.namespace.forgetReplies(session: d.session, below: 2)
        XCTAssertNil(d.namespace.cachedReply(session: d.session, request: 1))
        XCTAssertNotNil(d.namespace.cachedReply(session: d.session, request: 2))
    }

    func testReplyCacheIsBoundedPerSession() {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("f")
        for i in 0..<(ReplyCache.maxRepliesPerSession + 10) {
            _ = d.apply(.write(ino, handle: handle, offset: UInt64(i), data: [1]))
        }
        XCTAssertLessThanOrEqual(d.namespace.cachedReplyCount, ReplyCache.maxRepliesPerSession)
    }

    /// DESIGN.md §3: identity comes from the journal alone. Replaying the
    /// records gives the same inode numbers, cookies, handles and times.
    func testReplayRebuildsIdenticalNamespace() {
        var d = NamespaceDriver()
        let dir = d.mkdir("d")
        let (ino, handle) = d.create("f", in: dir)
        d.tick()
        _ = d.ok(.write(ino, handle: handle, offset: 100, data: [1, 2]))
        _ = d.ok(.rename(parent: dir, name: FileName("f"), newParent: rootInode, newName: FileName("g"), flags: 0))
        _ = d.ok(.setxattr(ino, name: FileName("user.k"), value: [3], flags: 0))
        _ = d.ok(.symlink(parent: dir, name: FileName("s"), target: [65], .root))
        XCTAssertEqual(d.replayed(), d.namespace)
    }

    /// Issue 12: locks are namespace state: journaled, replayed, checkpointed,
    /// and gone with their file; a version 1 checkpoint (before locks) reads as none.
    func testLocksAreReplayedCheckpointedAndGoWithTheirFile() throws {
        var d = NamespaceDriver()
        let (ino, handle) = d.create("db")
        func request(_ session: UInt64, _ kind: LockTable.Kind?, _ start: UInt64, _ end: UInt64) -> LockTable.Request {
            LockTable.Request(owner: LockTable.Owner(session: session, owner: 9), family: .fcntl, kind: kind,
                              range: LockTable.Range(start: start, end: end), pid: 100 + UInt32(session))
        }
        _ = d.ok(.setLock(ino, request(1, .exclusive, 0, 99), wait: false))
        _ = d.ok(.setLock(ino, request(2, .shared, 100, 199), wait: true))
        guard case .lock(let held?) = d.namespace.query(.getLock(ino, request(2, .exclusive, 50, 60))) else { return XCTFail("no holder") }
        XCTAssertEqual(held.pid, 101)
        XCTAssertEqual(d.namespace.query(.getLock(ino, request(1, .exclusive, 50, 60))), .lock(nil), "an owner never conflicts with itself")
        d.fails(.setLock(ino, request(2, .exclusive, 0, 0), wait: false), .EAGAIN)
        XCTAssertEqual(d.replayed(), d.namespace)
        let restored = try Namespace(checkpoint: d.namespace.checkpoint())
        XCTAssertEqual(restored.locks, d.namespace.locks, "the checkpoint lost the locks")

        // Session 2's lease ran out: its lock requests on the file answer EIO until it lets go.
        _ = d.ok(.expireSessionLocks(session: 2))
        XCTAssertEqual(d.namespace.query(.getLock(ino, request(2, .shared, 0, 0))), .error(.EIO))
        d.fails(.setLock(ino, request(2, .shared, 300, 300), wait: false), .EIO)
        XCTAssertEqual(d.replayed(), d.namespace)
        XCTAssertEqual(try Namespace(checkpoint: d.namespace.checkpoint()).locks, d.namespace.locks, "the checkpoint lost the lost marks")
        _ = d.ok(.releaseLocks(ino, owner: LockTable.Owner(session: 2, owner: 9), family: .fcntl))
        _ = d.ok(.setLock(ino, request(2, .shared, 300, 300), wait: false))
        _ = d.ok(.releaseLocks(ino, owner: LockTable.Owner(session: 2, owner: 9), family: .fcntl))

        _ = d.ok(.releaseLocks(ino, owner: LockTable.Owner(session: 1, owner: 9), family: .fcntl))
        XCTAssertEqual(d.namespace.query(.getLock(ino, request(2, .exclusive, 0, 99))), .lock(nil))
        _ = d.ok(.unlink(parent: rootInode, name: FileName("db")))
        _ = d.ok(.release(ino, handle: handle))
        _ = d.ok(.forget(ino))
        XCTAssertTrue(d.namespace.locks.isEmpty, "a freed file's locks stay: \(d.namespace.locks)")

        // Version 1 wrote no lock table (two counts, locks and lost marks) after the reply cache.
        var old = NamespaceDriver().namespace.checkpoint()
        old.removeLast(16)
        withUnsafeBytes(of: UInt32(1).littleEndian) { for i in 0..<4 { old[16 + i] = $0[i] } }
        withUnsafeBytes(of: UInt64(old.count - 16).littleEndian) { for i in 0..<8 { old[4 + i] = $0[i] } }
        let crc = old.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[16...])) }
        withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { old[12 + i] = $0[i] } }
        XCTAssertTrue(try Namespace(checkpoint: old).locks.isEmpty)
    }

    /// `baton locks` names each locked file by its path; one with no name left by its inode.
    func testTheLockListingNamesFilesByPathAndClients() {
        var d = NamespaceDriver()
        let dir = d.mkdir("mail")
        let sub = d.mkdir("spool", in: dir)
        let (box, _) = d.create("inbox", in: sub)
        let (gone, _) = d.create("tmp")
        func lock(_ ino: InodeNumber, _ session: UInt64) {
            _ = d.ok(.setLock(ino, LockTable.Request(owner: LockTable.Owner(session: session, owner: 1), family: .flock, kind: .exclusive,
                                                     range: .wholeFile, pid: 7), wait: false))
        }
        lock(box, 4)
        lock(gone, 5)
        _ = d.ok(.unlink(parent: rootInode, name: FileName("tmp")))
        let listing = d.namespace.lockListing(export: "demo", epoch: 2, leaseMs: 30_000) { "client \($0)" }
        XCTAssertEqual(listing.locks.map(\.file), ["/mail/spool/inbox", "inode \(gone)"])
        XCTAssertEqual(listing.locks.map(\.client), ["client 4", "client 5"])
        XCTAssertEqual(listing.locks.first?.end, nil, "a whole-file lock runs to the end")
        XCTAssertEqual(listing.locks.first?.family, "flock")
        XCTAssertGreaterThan(listing.locks.first?.since ?? 0, 0, "the lock has no time")
        XCTAssertEqual(listing.more, 0)
    }

    func testCheckpointRoundTripsAndDetectsDamage() throws {
        var d = NamespaceDriver()
        let dir = d.mkdir("d")
        for i in 0..<50 { _ = d.create("f\(i)", in: dir) }
        _ = d.ok(.unlink(parent: dir, name: FileName("f3")))
        _ = d.ok(.setxattr(dir, name: FileName("user.x"), value: [1, 2], flags: 0))
        let bytes = d.namespace.checkpoint()
        let restored = try Namespace(checkpoint: bytes)
        XCTAssertEqual(restored, d.namespace)
        XCTAssertEqual(NamespaceDriver(namespace: restored).names(in: dir), d.names(in: dir))
        var damaged = bytes
        damaged[damaged.count / 2] ^= 0xFF
        XCTAssertThrowsError(try Namespace(checkpoint: damaged))
        XCTAssertThrowsError(try Namespace(checkpoint: Array(bytes.prefix(bytes.count - 1))))
    }

    /// Nodes drop confirmed replies on their own: that alone must not make
    /// their namespaces differ, but any difference in files must.
    func testSameFilesIgnoresOnlyConfirmedReplies() {
        var d = NamespaceDriver()
        _ = d.mkdir("a")
        _ = d.mkdir("b")
        var trimmed = d.namespace
        trimmed.forgetReplies(session: d.session, below: 3)
        XCTAssertNotEqual(trimmed, d.namespace)
        XCTAssertTrue(trimmed.sameFiles(as: d.namespace))
        var other = d
        _ = other.mkdir("c")
        XCTAssertFalse(other.namespace.sameFiles(as: d.namespace))
    }

    /// ESTALE, not ENOENT: the kernel of a client that still has a name for
    /// the removed inode looks the name up again (see `existing`).
    func testOperationsOnMissingInodesAreStale() {
        var d = NamespaceDriver()
        d.fails(.setattr(999, AttributeChanges(mode: 0o644), .root), .ESTALE)
        d.fails(.open(999, flags: 0), .ESTALE)
        d.fails(.mkdir(parent: 999, name: FileName("x"), mode: 0o755, .root), .ESTALE)
        XCTAssertEqual(d.namespace.query(.getattr(999)), .error(.ESTALE))
        let (f, _) = d.create("f")
        d.fails(.mkdir(parent: f, name: FileName("x"), mode: 0o755, .root), .ENOTDIR)
        XCTAssertEqual(d.namespace.query(.readdir(f, cookie: 0, maxBytes: 4096)), .error(.ENOTDIR))
    }
}

extension Reply {
    var isError: Bool {
        if case .error = self { return true }
        return false
    }
}

extension NamespaceDriver {
    mutating func mkdirLookup(_ name: String) -> InodeNumber {
        guard case .entry(let a) = lookup(name) else { return 0 }
        return a.inode
    }
}

extension JournalRecord {
    /// The record as an indirect write leaves it in the local journal: write data left out.
    var withoutWriteData: JournalRecord {
        guard case .write(let ino, let handle, let offset, let data) = operation, !data.isEmpty else { return self }
        var record = self
        record.operation = .write(ino, handle: handle, offset: offset, data: [])
        return record
    }
}
