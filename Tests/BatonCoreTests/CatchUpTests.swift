// Goal: a returning standby catches up from the last record its journal
// shares with the server's (log matching on epochs), and only the files
// either side's later records changed are copied.
// Method: journal histories built record by record, as a server and a
// standby write them around swaps; records applied to a namespace, with
// the files each one touched.
@testable import BatonCore
import XCTest

final class CatchUpTests: XCTestCase {
    /// A journal from a checkpoint at `checkpoint` (written in `epoch`), then records of the given epochs.
    private func history(checkpoint: UInt64 = 0, epoch: UInt64 = 0, _ epochs: [UInt64]) -> JournalHistory {
        var history = JournalHistory(checkpoint: checkpoint, epoch: epoch)
        for e in epochs { history.append(sequence: history.last + 1, epoch: e) }
        return history
    }

    private func records(_ count: Int, epoch: UInt64) -> [UInt64] { Array(repeating: epoch, count: count) }

    func testInStepAndBehindShareTheStandbysLastRecord() {
        let server = history(records(10, epoch: 1))
        XCTAssertEqual(server.divergencePoint(with: history(records(10, epoch: 1))), 10)
        XCTAssertEqual(server.divergencePoint(with: history(records(6, epoch: 1))), 6)
        XCTAssertEqual(server.divergencePoint(with: history([])), 0, "an empty replica shares the empty start")
    }

    /// The old server journaled records 9-12 of epoch 1 that never reached
    /// the standby, which took over at 8 with epoch 2.
    func testTheFencedServersUnreplicatedRecordsAreTheDivergentTail() {
        let old = history(records(12, epoch: 1))
        let new = history(records(8, epoch: 1) + records(5, epoch: 2))
        XCTAssertEqual(new.divergencePoint(with: old), 8)
        // Right after the swap, before the new server wrote anything.
        XCTAssertEqual(history(records(8, epoch: 1)).divergencePoint(with: old), 8)
    }

    /// The old server of epoch 2 started at 8, wrote 9-10 and replicated
    /// none of it; the standby took over at 8 with epoch 3.
    func testAnEpochWithoutReplicatedRecordsPartsAtItsStart() {
        let old = history(records(8, epoch: 1) + records(2, epoch: 2))
        let new = history(records(8, epoch: 1) + records(4, epoch: 3))
        XCTAssertEqual(new.divergencePoint(with: old), 8)
        XCTAssertEqual(old.divergencePoint(with: new), 8, "the rule is symmetric")
    }

    func testSeveralSwapsLater() {
        let standby = history(records(5, epoch: 1) + records(5, epoch: 2) + records(3, epoch: 4))
        let server = history(records(5, epoch: 1) + records(5, epoch: 2) + records(1, epoch: 4) + records(6, epoch: 5))
        XCTAssertEqual(server.divergencePoint(with: standby), 11)
    }

    func testACheckpointPastTheSharedRecordLeavesNoAnswer() {
        // The server checkpointed at 20 (written in epoch 2); the standby's records part at 8.
        let server = history(checkpoint: 20, epoch: 2, records(5, epoch: 2))
        let standby = history(records(12, epoch: 1))
        XCTAssertNil(server.divergencePoint(with: standby))
        // The standby checkpointed at 12; the server's journal reaches back to it.
        let behind = history(checkpoint: 12, epoch: 1, [])
        XCTAssertEqual(history(records(12, epoch: 1) + records(3, epoch: 2)).divergencePoint(with: behind), 12)
        // Both journals start at checkpoints that share nothing known.
        XCTAssertNil(history(checkpoint: 30, epoch: 3, []).divergencePoint(with: history(checkpoint: 10, epoch: 1, [])))
    }

    /// A checkpoint written while records went on (issue 11) keeps the
    /// records after its cut, and the epoch of the cut itself.
    func testACheckpointAtAnEarlierRecordKeepsTheRecordsAfterIt() {
        // Records 1-6 in epoch 1, 7-9 in epoch 2, 10-11 in epoch 3; the checkpoint cut at 8.
        var journal = history(records(6, epoch: 1) + records(3, epoch: 2) + records(2, epoch: 3))
        journal.checkpointed(at: 8)
        XCTAssertEqual(journal, history(checkpoint: 8, epoch: 2, [2] + records(2, epoch: 3)))
        XCTAssertNil(journal.epoch(of: 7), "a record before the cut is gone")
        XCTAssertEqual(journal.epoch(of: 8), 2)
        XCTAssertEqual(journal.epoch(of: 10), 3)
        // At the start of a run, and at the last record.
        var atRunStart = history(records(3, epoch: 1) + records(2, epoch: 2))
        atRunStart.checkpointed(at: 4)
        XCTAssertEqual(atRunStart, history(checkpoint: 4, epoch: 2, [2]))
        var atLast = history(records(3, epoch: 1))
        atLast.checkpointed(at: 3)
        XCTAssertEqual(atLast, history(checkpoint: 3, epoch: 1, []))
    }

    func testHistoriesRoundTripAndBadOnesAreRefused() throws {
        let standby = history(checkpoint: 4, epoch: 1, records(3, epoch: 1) + records(2, epoch: 3))
        let messages: [Message] = [
            .replicaPosition(standby), .catchUp(from: 7), .filesChanged([2, 9, 1 << 40]), .filesChanged(nil), .filesChanged([]),
            .snapshotBegin(partial: true, bytes: 1 << 33), .snapshotBegin(partial: false, bytes: 0), .repliesWait(through: 1 << 40),
        ]
        for message in messages {
            let decoded = try Array(message.frame().dropFirst(4)).withUnsafeBytes { try Message.decode($0) }
            XCTAssertEqual(decoded, message)
        }
        XCTAssertThrowsError(try JournalHistory(runs: [.init(first: 5, epoch: 2), .init(first: 3, epoch: 3)], last: 9))
        XCTAssertThrowsError(try JournalHistory(runs: [.init(first: 5, epoch: 2), .init(first: 6, epoch: 1)], last: 9))
        XCTAssertThrowsError(try JournalHistory(runs: [.init(first: 5, epoch: 2)], last: 4))
        XCTAssertThrowsError(try JournalHistory(runs: [], last: 4))
    }

    /// The files each record's data changes, found by applying it.
    func testFilesTouchedByEachKindOfRecord() {
        var d = NamespaceDriver()
        func touched(_ operation: Operation) -> [InodeNumber] {
            let outcome = d.apply(operation)
            return d.records.last!.filesTouched(effects: outcome.effects)
        }
        let (file, handle) = d.create("f")
        XCTAssertEqual(touched(.write(file, handle: handle, offset: 0, data: [1, 2, 3])), [file])
        XCTAssertEqual(touched(.setattr(file, AttributeChanges(size: 1), .root)), [file])
        XCTAssertEqual(touched(.setattr(file, AttributeChanges(mode: 0o600), .root)), [])
        XCTAssertEqual(touched(.open(file, flags: OpenFlags.readWrite | OpenFlags.truncate)), [file])
        // A create that finds the name: O_TRUNC truncates the file already there.
        XCTAssertEqual(touched(.create(parent: rootInode, name: FileName("f"), mode: 0o644,
                                       flags: OpenFlags.readWrite | OpenFlags.truncate, .root)), [file])
        let (other, otherHandle) = d.create("g")
        XCTAssertEqual(touched(.create(parent: rootInode, name: FileName("h"), mode: 0o644, flags: OpenFlags.readWrite, .root)), [])
        XCTAssertEqual(touched(.rename(parent: rootInode, name: FileName("g"), newParent: rootInode, newName: FileName("f"), flags: 0)), [])
        XCTAssertEqual(touched(.mkdir(parent: rootInode, name: FileName("d"), mode: 0o755, .root)), [])
        // The file renamed over lives on while open and known to a kernel: its data goes with the forget.
        XCTAssertEqual(touched(.release(other, handle: otherHandle)), [])
        for open in d.namespace.handles.filter({ $0.value.inode == file }).map(\.key) {
            XCTAssertEqual(touched(.release(file, handle: open)), [])
        }
        XCTAssertEqual(touched(.forget(file)), [file])
        XCTAssertEqual(touched(.unlink(parent: rootInode, name: FileName("f"))), [])
        XCTAssertEqual(touched(.forget(other)), [other])
    }
}
