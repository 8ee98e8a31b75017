@testable import BatonCore
import XCTest

/// XCTest brings Foundation.Operation; the tests mean the file system operation.
typealias Operation = BatonCore.Operation

/// Drives a namespace the way the export server does: each mutation becomes
/// the next journal record, with a clock the test advances by hand.
struct NamespaceDriver {
    var namespace = Namespace()
    var records: [JournalRecord] = []
    var clock = Timestamp(seconds: 1_000, nanoseconds: 0)
    var session: UInt64 = 7
    var nextRequest: UInt64 = 1
    let root = Caller.root

    mutating func tick(_ seconds: Int64 = 1) { clock.seconds += seconds }

    @discardableResult
    mutating func apply(_ operation: Operation, request: UInt64? = nil) -> Namespace.Outcome {
        let requestSequence = request ?? nextRequest
        nextRequest = max(nextRequest, requestSequence + 1)
        let record = JournalRecord(sequence: namespace.appliedSequence + 1, epoch: 1, time: clock, session: session,
                                   requestSequence: requestSequence, operation: operation)
        records.append(record)
        return namespace.apply(record)
    }

    mutating func ok(_ operation: Operation, file: StaticString = #filePath, line: UInt = #line) -> Reply {
        let reply = apply(operation).reply
        if case .error(let errno) = reply { XCTFail("\(operation) failed with \(errno)", file: file, line: line) }
        return reply
    }

    mutating func fails(_ operation: Operation, _ expected: Errno, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(apply(operation).reply, .error(expected), "\(operation)", file: file, line: line)
    }

    mutating func mkdir(_ name: String, in parent: InodeNumber = rootInode, mode: UInt32 = 0o755) -> InodeNumber {
        guard case .entry(let a) = ok(.mkdir(parent: parent, name: FileName(name), mode: mode, root)) else {
            XCTFail("mkdir \(name)"); return 0
        }
        return a.inode
    }

    /// Creates and opens a file; returns (inode, handle).
    mutating func create(_ name: String, in parent: InodeNumber = rootInode, mode: UInt32 = 0o644,
                         flags: UInt32 = OpenFlags.readWrite, caller: Caller = .root) -> (InodeNumber, UInt64) {
        guard case .created(let a, let handle) = ok(.create(parent: parent, name: FileName(name), mode: mode, flags: flags, caller)) else {
            XCTFail("create \(name)"); return (0, 0)
        }
        return (a.inode, handle)
    }

    func lookup(_ name: String, in parent: InodeNumber = rootInode) -> Reply {
        namespace.query(.lookup(parent: parent, name: FileName(name)))
    }

    func attributes(_ ino: InodeNumber) -> FileAttributes {
        namespace.attributes(of: ino)!
    }

    func names(in directory: InodeNumber) -> [String] {
        var cookie: UInt64 = 0
        var names: [String] = []
        while case .directory(let entries) = namespace.query(.readdir(directory, cookie: cookie, maxBytes: 4096)), !entries.isEmpty {
            names += entries.map(\.name.description)
            cookie = entries.last!.cookie
        }
        return names
    }

    /// A namespace rebuilt from this driver's records alone, as a restarted or promoted server builds it.
    func replayed() -> Namespace {
        var fresh = Namespace()
        for record in records { _ = fresh.apply(record) }
        return fresh
    }
}
