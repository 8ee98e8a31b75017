// Goal: an export that squashes treats root (or every caller) as the
// anonymous user, checks that user's permissions as Linux would before a
// mutation is journaled, and records what it creates as the anonymous
// user's; clients named in root_clients keep their root.
// Method: a namespace set up by root through the driver, then each rule
// asked of `permissionProblem` for owner, group, other and root.
@testable import BatonCore
import XCTest

final class SquashTests: XCTestCase {
    let alice = Credentials(uid: 1000, gid: 1000)
    let bob = Credentials(uid: 1001, gid: 1001)
    let staff = Credentials(uid: 1002, gid: 1000)

    func testRootIsSquashedByDefaultAndOthersAreTrusted() {
        let squash = Squash.rootToNobody
        XCTAssertEqual(squash.squashed(.root, scope: .root), .nobody)
        XCTAssertNil(squash.squashed(alice, scope: .root), "a user's uid is trusted: the client's kernel checked it")
        XCTAssertEqual(squash.squashed(nil, scope: .root), .nobody, "a request naming no caller is squashed")
        XCTAssertEqual(squash.squashed(alice, scope: .all), .nobody)
        XCTAssertNil(squash.squashed(.root, scope: .none))
    }

    func testRootClientsKeepTheirRoot() {
        let squash = Squash(scope: .root, anonymous: Credentials(uid: 500, gid: 600), rootClients: ["admin-*"])
        XCTAssertEqual(squash.scope(forClient: "admin-1"), .none)
        XCTAssertEqual(squash.scope(forClient: "laptop"), .root)
        XCTAssertEqual(squash.scope(forClient: nil), .root, "over plain TCP no client has a name")
        XCTAssertEqual(Squash(scope: .all, rootClients: ["admin-*"]).scope(forClient: "admin-1"), .all)
        XCTAssertEqual(squash.squashed(.root, scope: squash.scope(forClient: "laptop")), Credentials(uid: 500, gid: 600))
    }

    /// root owns `/` (0755); /shared is 1777 with a file of alice's (0640,
    /// group 1000) and one of bob's; /private is alice's 0700.
    private func exampleExport() -> (NamespaceDriver, shared: InodeNumber, alicesFile: InodeNumber, bobsFile: InodeNumber,
                                     privateDirectory: InodeNumber) {
        var d = NamespaceDriver()
        let shared = d.mkdir("shared", mode: 0o1777)
        let (alicesFile, h1) = d.create("alice.txt", in: shared, mode: 0o640, caller: Caller(uid: 1000, gid: 1000))
        let (bobsFile, h2) = d.create("bob.txt", in: shared, mode: 0o644, caller: Caller(uid: 1001, gid: 1001))
        _ = d.ok(.release(alicesFile, handle: h1))
        _ = d.ok(.release(bobsFile, handle: h2))
        let privateDirectory = d.mkdir("private", mode: 0o700)
        _ = d.ok(.setattr(privateDirectory, AttributeChanges(uid: 1000, gid: 1000), .root))
        return (d, shared, alicesFile, bobsFile, privateDirectory)
    }

    func testCreatingNeedsWriteAndSearchOnTheDirectory() {
        let (d, shared, _, _, privateDirectory) = exampleExport()
        let ns = d.namespace
        let name = FileName("new")
        let create = Operation.create(parent: rootInode, name: name, mode: 0o644, flags: OpenFlags.readWrite, .root)
        XCTAssertEqual(ns.permissionProblem(create, by: .nobody), .EACCES, "squashed root may not create in root's 0755 /")
        XCTAssertNil(ns.permissionProblem(create, by: .root), "an unsquashed root may")
        XCTAssertNil(ns.permissionProblem(.mkdir(parent: shared, name: name, mode: 0o755, .root), by: .nobody))
        XCTAssertNil(ns.permissionProblem(.mknod(parent: privateDirectory, name: name, mode: Mode.fifo | 0o644, rdev: 0, .root), by: alice))
        XCTAssertEqual(ns.permissionProblem(.symlink(parent: privateDirectory, name: name, target: [1], .root), by: bob), .EACCES)
        XCTAssertEqual(ns.permissionProblem(.link(shared, newParent: rootInode, newName: name), by: alice), .EACCES)
    }

    func testLookupNeedsSearchAndListingNeedsRead() {
        let (d, _, _, _, privateDirectory) = exampleExport()
        let ns = d.namespace
        XCTAssertEqual(ns.permissionProblem(.lookup(parent: privateDirectory, name: FileName("x")), by: bob), .EACCES)
        XCTAssertNil(ns.permissionProblem(.lookup(parent: privateDirectory, name: FileName("x")), by: alice))
        XCTAssertEqual(ns.permissionProblem(.readdir(privateDirectory, cookie: 0, maxBytes: 4096), by: .nobody), .EACCES)
        XCTAssertNil(ns.permissionProblem(.readdir(rootInode, cookie: 0, maxBytes: 4096), by: .nobody))
        XCTAssertNil(ns.permissionProblem(.getattr(privateDirectory), by: bob))
    }

    func testOpeningChecksTheFilesBitsForOwnerGroupAndOthers() {
        let (d, shared, alicesFile, bobsFile, _) = exampleExport()
        let ns = d.namespace
        let read = Operation.open(alicesFile, flags: 0), write = Operation.open(alicesFile, flags: OpenFlags.writeOnly)
        XCTAssertNil(ns.permissionProblem(write, by: alice))
        XCTAssertNil(ns.permissionProblem(read, by: staff), "group may read a 0640 file")
        XCTAssertEqual(ns.permissionProblem(write, by: staff), .EACCES, "but not write it")
        XCTAssertEqual(ns.permissionProblem(read, by: bob), .EACCES, "others may not read it")
        XCTAssertEqual(ns.permissionProblem(.open(bobsFile, flags: OpenFlags.truncate), by: alice), .EACCES, "O_TRUNC needs write")
        XCTAssertEqual(ns.permissionProblem(.open(bobsFile, flags: OpenFlags.readWrite), by: alice), .EACCES)
        // An existing file reached by create without O_EXCL is an open of it.
        let reopen = Operation.create(parent: shared, name: FileName("alice.txt"), mode: 0o644,
                                      flags: OpenFlags.writeOnly, .root)
        XCTAssertEqual(ns.permissionProblem(reopen, by: bob), .EACCES)
    }

    func testAReadGoesThroughAHandleOpenForReadingOnThatInode() {
        var (d, _, alicesFile, bobsFile, _) = exampleExport()
        guard case .opened(let handle) = d.ok(.open(bobsFile, flags: OpenFlags.writeOnly)) else { return XCTFail("open") }
        guard case .opened(let readHandle) = d.ok(.open(bobsFile, flags: 0)) else { return XCTFail("open") }
        let ns = d.namespace
        XCTAssertNil(ns.permissionProblem(.read(bobsFile, handle: readHandle, offset: 0, size: 10), by: alice))
        XCTAssertEqual(ns.permissionProblem(.read(bobsFile, handle: handle, offset: 0, size: 10), by: alice), .EBADF)
        XCTAssertEqual(ns.permissionProblem(.read(alicesFile, handle: readHandle, offset: 0, size: 10), by: bob), .EBADF,
                       "a handle of one file does not read another")
    }

    func testTheStickyBitKeepsOthersFilesFromRemoval() {
        let (d, shared, _, _, _) = exampleExport()
        let ns = d.namespace
        let removeAlices = Operation.unlink(parent: shared, name: FileName("alice.txt"))
        XCTAssertNil(ns.permissionProblem(removeAlices, by: alice))
        XCTAssertEqual(ns.permissionProblem(removeAlices, by: bob), .EPERM)
        XCTAssertEqual(ns.permissionProblem(removeAlices, by: .nobody), .EPERM)
        XCTAssertNil(ns.permissionProblem(removeAlices, by: .root))
        let renameOverBobs = Operation.rename(parent: shared, name: FileName("alice.txt"), newParent: shared,
                                              newName: FileName("bob.txt"), flags: 0)
        XCTAssertEqual(ns.permissionProblem(renameOverBobs, by: alice), .EPERM, "replacing bob's file removes it")
        XCTAssertNil(ns.permissionProblem(.rename(parent: shared, name: FileName("alice.txt"), newParent: shared,
                                                  newName: FileName("fresh"), flags: 0), by: alice))
        XCTAssertEqual(ns.permissionProblem(.rmdir(parent: rootInode, name: FileName("shared")), by: .nobody), .EACCES)
    }

    func testMovingADirectoryToAnotherParentNeedsWriteOnIt() {
        var (d, shared, _, _, privateDirectory) = exampleExport()
        let mine = d.mkdir("mine", in: shared, mode: 0o555)
        _ = d.ok(.setattr(mine, AttributeChanges(uid: 1000, gid: 1000), .root))
        let move = Operation.rename(parent: shared, name: FileName("mine"), newParent: privateDirectory, newName: FileName("mine"), flags: 0)
        XCTAssertEqual(d.namespace.permissionProblem(move, by: alice), .EACCES, "its '..' changes, and it is not writable")
        let rename = Operation.rename(parent: shared, name: FileName("mine"), newParent: shared, newName: FileName("ours"), flags: 0)
        XCTAssertNil(d.namespace.permissionProblem(rename, by: alice), "a rename in place leaves '..' alone")
    }

    func testOnlyTheOwnerChangesModeAndTimesAndNobodyGivesFilesAway() {
        let (d, _, alicesFile, bobsFile, _) = exampleExport()
        let ns = d.namespace
        func change(_ c: AttributeChanges, _ ino: InodeNumber, _ who: Credentials) -> Errno? {
            ns.permissionProblem(.setattr(ino, c, .root), by: who)
        }
        XCTAssertNil(change(AttributeChanges(mode: 0o600), alicesFile, alice))
        XCTAssertEqual(change(AttributeChanges(mode: 0o666), alicesFile, bob), .EPERM)
        XCTAssertEqual(change(AttributeChanges(uid: 1001), alicesFile, alice), .EPERM, "no giving files away")
        XCTAssertNil(change(AttributeChanges(uid: 1000), alicesFile, alice), "chown to oneself is no change")
        XCTAssertEqual(change(AttributeChanges(uid: 1000), bobsFile, alice), .EPERM, "nor taking them")
        XCTAssertNil(change(AttributeChanges(gid: 1000), alicesFile, alice))
        XCTAssertEqual(change(AttributeChanges(gid: 4242), alicesFile, alice), .EPERM, "only to the caller's own group")
        XCTAssertEqual(change(AttributeChanges(gid: 1000), bobsFile, alice), .EPERM)
        XCTAssertEqual(change(AttributeChanges(mtime: .set(.zero)), bobsFile, alice), .EPERM)
        XCTAssertNil(change(AttributeChanges(atime: .now, mtime: .now), alicesFile, alice))
        XCTAssertEqual(change(AttributeChanges(atime: .now, mtime: .now), bobsFile, alice), .EACCES, "touch needs write, for a non-owner")
        XCTAssertEqual(change(AttributeChanges(size: 0), bobsFile, alice), .EACCES)
        XCTAssertNil(change(AttributeChanges(size: 0), alicesFile, alice))
        XCTAssertNil(change(AttributeChanges(uid: 1001, gid: 1001), alicesFile, .root))
    }

    func testExtendedAttributesOfUsersFollowTheFilesBitsAndOthersAreRoots() {
        let (d, _, alicesFile, _, _) = exampleExport()
        let ns = d.namespace
        let user = FileName("user.tag"), trusted = FileName("trusted.tag")
        XCTAssertNil(ns.permissionProblem(.setxattr(alicesFile, name: user, value: [1], flags: 0), by: alice))
        XCTAssertEqual(ns.permissionProblem(.setxattr(alicesFile, name: user, value: [1], flags: 0), by: staff), .EACCES)
        XCTAssertEqual(ns.permissionProblem(.removexattr(alicesFile, name: trusted), by: alice), .EPERM)
        XCTAssertNil(ns.permissionProblem(.getxattr(alicesFile, name: user, size: 0), by: staff))
        XCTAssertEqual(ns.permissionProblem(.getxattr(alicesFile, name: user, size: 0), by: bob), .EACCES)
    }

    func testASquashedCallersFilesBelongToTheAnonymousUser() {
        var (d, shared, _, _, _) = exampleExport()
        let asked = Operation.create(parent: shared, name: FileName("by-root"), mode: 0o644, flags: OpenFlags.readWrite,
                                     Caller(uid: 0, gid: 0, umask: 0o022))
        guard case .created(let attributes, _) = d.ok(asked.acting(as: Credentials(uid: 500, gid: 600))) else { return XCTFail("create") }
        XCTAssertEqual([attributes.uid, attributes.gid], [500, 600])
        XCTAssertEqual(Operation.mkdir(parent: 1, name: FileName("d"), mode: 0o755, Caller(uid: 0, gid: 0, umask: 0o027)).acting(as: .nobody),
                       .mkdir(parent: 1, name: FileName("d"), mode: 0o755, Caller(uid: 65534, gid: 65534, umask: 0o027)), "the umask stays")
        XCTAssertEqual(Operation.unlink(parent: 1, name: FileName("d")).acting(as: .nobody), .unlink(parent: 1, name: FileName("d")))
    }
}
