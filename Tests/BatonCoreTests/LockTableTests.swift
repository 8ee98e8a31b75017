// Goal (issue 12): the export's lock table follows a local Linux file
// system's rules: shared and exclusive, ranges split and merged, upgrade and
// downgrade in place, fcntl and flock apart, owners told apart by session,
// release on close and with the session; waiters granted in turn, deadlocks
// refused; leases that run out with injected time.
// Method: cases written out, then random requests of three owners on a
// 32-byte file checked byte by byte against a model.
import BatonCore
import XCTest

extension LockTable {
    /// Times do not matter to these tests: every lock is taken at zero.
    fileprivate mutating func apply(_ inode: InodeNumber, _ request: Request) -> Outcome { apply(inode, request, at: .zero) }
}

final class LockTableTests: XCTestCase {
    private typealias Table = LockTable
    private let file: InodeNumber = 7
    private let alice = LockTable.Owner(session: 1, owner: 100)
    private let bob = LockTable.Owner(session: 2, owner: 100)  // the same owner number, another client
    private let carol = LockTable.Owner(session: 2, owner: 200)

    private func request(_ owner: LockTable.Owner, _ kind: LockTable.Kind?, _ start: UInt64, _ end: UInt64,
                         family: LockTable.Family = .fcntl, pid: UInt32 = 42) -> LockTable.Request {
        LockTable.Request(owner: owner, family: family, kind: kind, range: LockTable.Range(start: start, end: end), pid: pid)
    }

    /// The table's locks of `file`, as "owner kind range" strings.
    private func held(_ table: LockTable) -> [String] {
        (table.locks[file] ?? []).map { "\($0.owner.session)/\($0.owner.owner) \($0.kind) \($0.range)" }
    }

    func testSharedLocksCoexistAndAnExclusiveOneConflictsNamingTheHolder() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(alice, .shared, 0, 99, pid: 11)), .granted)
        XCTAssertEqual(table.apply(file, request(bob, .shared, 50, 149)), .granted)
        let refused = table.apply(file, request(carol, .exclusive, 90, 95))
        guard case .conflicts(let holder) = refused else { return XCTFail("\(refused)") }
        XCTAssertEqual(holder.owner, alice)
        XCTAssertEqual(holder.pid, 11, "F_GETLK names the holder's pid as its client saw it")
        XCTAssertEqual(table.conflict(file, with: request(carol, .exclusive, 120, 130))?.owner, bob)
        XCTAssertNil(table.conflict(file, with: request(carol, .exclusive, 150, 200)))
        XCTAssertNil(table.conflict(file, with: request(carol, .shared, 0, 200)))
        XCTAssertEqual(held(table), ["1/100 shared 0-99", "2/100 shared 50-149"], "a refused request changed the table")
    }

    func testAnOwnerNeverConflictsWithItselfAndChangesItsLockInPlace() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(alice, .shared, 0, 99)), .granted)
        // Upgrade of the middle: the ends stay shared.
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 40, 59)), .granted)
        XCTAssertEqual(held(table), ["1/100 shared 0-39", "1/100 exclusive 40-59", "1/100 shared 60-99"])
        // Downgrade back: one shared lock again.
        XCTAssertEqual(table.apply(file, request(alice, .shared, 40, 59)), .granted)
        XCTAssertEqual(held(table), ["1/100 shared 0-99"])
        // An upgrade another owner's shared lock forbids leaves the lock as it was.
        XCTAssertEqual(table.apply(file, request(bob, .shared, 10, 10)), .granted)
        XCTAssertNotEqual(table.apply(file, request(alice, .exclusive, 0, 99)), .granted)
        XCTAssertEqual(held(table), ["1/100 shared 0-99", "2/100 shared 10-10"])
    }

    func testUnlockSplitsAndAdjoiningLocksMerge() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 0, 99)), .granted)
        XCTAssertEqual(table.apply(file, request(alice, nil, 40, 59)), .granted)
        XCTAssertEqual(held(table), ["1/100 exclusive 0-39", "1/100 exclusive 60-99"])
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 40, 59)), .granted)
        XCTAssertEqual(held(table), ["1/100 exclusive 0-99"], "adjoining locks of one owner and kind are one")
        XCTAssertEqual(table.apply(file, request(alice, .shared, 100, 109)), .granted)
        XCTAssertEqual(held(table), ["1/100 exclusive 0-99", "1/100 shared 100-109"], "locks of two kinds stay two")
        // Unlocking what is not held is no error and changes nothing.
        XCTAssertEqual(table.apply(file, request(bob, nil, 0, .max)), .granted)
        XCTAssertEqual(table.apply(file, request(alice, nil, 0, .max)), .granted)
        XCTAssertTrue(table.isEmpty)
    }

    func testALockToTheEndOfTheFileCoversEveryOffset() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 1000, .max)), .granted)
        XCTAssertEqual(table.conflict(file, with: request(bob, .shared, 1 << 62, 1 << 62))?.owner, alice)
        XCTAssertNil(table.conflict(file, with: request(bob, .shared, 0, 999)))
        XCTAssertEqual(table.apply(file, request(alice, nil, 2000, .max)), .granted)
        XCTAssertEqual(held(table), ["1/100 exclusive 1000-1999"])
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 2000, .max)), .granted)
        XCTAssertEqual(held(table), ["1/100 exclusive 1000-EOF"])
    }

    func testFcntlAndFlockLocksAreApartAndOwnersOfTwoClientsAreTwo() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 0, .max, family: .flock)), .granted)
        XCTAssertEqual(table.apply(file, request(bob, .exclusive, 0, .max, family: .fcntl)), .granted, "flock excluded fcntl")
        XCTAssertNotEqual(table.apply(file, request(bob, .shared, 0, .max, family: .flock)), .granted,
                          "the same owner number on another client counted as the holder")
        XCTAssertNotEqual(table.apply(file, request(alice, .shared, 5, 5, family: .fcntl)), .granted)
        XCTAssertNil(table.conflict(1 + file, with: request(alice, .exclusive, 0, .max)), "a lock of one file excluded another")
    }

    func testCloseReleasesTheOwnersFcntlLocksAndTheSessionItsAll() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(bob, .shared, 0, 9)), .granted)
        XCTAssertEqual(table.apply(file, request(bob, .exclusive, 0, .max, family: .flock)), .granted)
        XCTAssertEqual(table.apply(file, request(carol, .shared, 20, 29)), .granted)
        XCTAssertEqual(table.apply(file + 1, request(carol, .shared, 0, 0)), .granted)
        table.release(file, owner: bob, family: .fcntl)
        XCTAssertEqual(held(table), ["2/100 exclusive 0-EOF", "2/200 shared 20-29"], "flush released a flock lock or another owner's")
        XCTAssertEqual(table.expireSession(2), [file, file + 1])
        XCTAssertTrue(table.isEmpty)
    }

    func testWaitersAreGrantedInTurnWhenTheLockIsFree() {
        var table = LockTable()
        var waiters = LockWaiters()
        XCTAssertEqual(table.apply(file, request(alice, .shared, 0, 99)), .granted)
        let writer = LockWaiters.Waiter(id: 1, inode: file, request: request(bob, .exclusive, 0, 99))
        XCTAssertEqual(waiters.request(writer, in: &table), .waits)
        // A reader that comes after the writer does not overtake it.
        let reader = LockWaiters.Waiter(id: 2, inode: file, request: request(carol, .shared, 50, 60))
        XCTAssertEqual(waiters.request(reader, in: &table), .waits)
        XCTAssertEqual(waiters.grantFree(in: &table), [], "granted while the lock is held")
        XCTAssertEqual(table.apply(file, request(alice, nil, 0, .max)), .granted)
        XCTAssertEqual(waiters.grantFree(in: &table).map(\.id), [1])
        XCTAssertEqual(held(table), ["2/100 exclusive 0-99"])
        XCTAssertEqual(table.apply(file, request(bob, .shared, 0, 99)), .granted)  // a downgrade frees the reader
        XCTAssertEqual(waiters.grantFree(in: &table).map(\.id), [2])
        XCTAssertTrue(waiters.waiting.isEmpty)
        // A waiter whose client gives up, and a session's waiters, go.
        let third = LockWaiters.Waiter(id: 3, inode: file, request: request(alice, .exclusive, 0, 0))
        XCTAssertEqual(waiters.request(third, in: &table), .waits)
        XCTAssertEqual(waiters.cancel(id: 3), third)
        XCTAssertNil(waiters.cancel(id: 3))
        XCTAssertEqual(waiters.request(third, in: &table), .waits)
        XCTAssertEqual(waiters.cancelSession(1), [third])
    }

    func testAWaitThatWouldCloseACycleIsADeadlock() {
        var table = LockTable()
        var waiters = LockWaiters()
        XCTAssertEqual(table.apply(file, request(alice, .exclusive, 0, 0)), .granted)
        XCTAssertEqual(table.apply(file, request(bob, .exclusive, 1, 1)), .granted)
        XCTAssertEqual(table.apply(file, request(carol, .exclusive, 2, 2)), .granted)
        XCTAssertEqual(waiters.request(.init(id: 1, inode: file, request: request(alice, .exclusive, 1, 1)), in: &table), .waits)
        XCTAssertEqual(waiters.request(.init(id: 2, inode: file, request: request(bob, .exclusive, 2, 2)), in: &table), .waits)
        // carol → alice → bob → carol.
        XCTAssertEqual(waiters.request(.init(id: 3, inode: file, request: request(carol, .exclusive, 0, 0)), in: &table), .deadlock)
        XCTAssertEqual(waiters.waiting.map(\.id), [1, 2], "a refused waiter was queued")
        // Without the cycle the same wait is fine.
        XCTAssertEqual(waiters.cancel(id: 2)?.id, 2)
        XCTAssertEqual(waiters.request(.init(id: 3, inode: file, request: request(carol, .exclusive, 0, 0)), in: &table), .waits)
    }

    /// A renewing client keeps its locks only while it renews, connection or
    /// not (a stopped client's connection lingers); an older one while it is connected.
    func testALeaseRunsOutOnlyWithoutRenewal() {
        var server = SweepingServer(lease: 5000, holders: [1, 2])
        server.leases.connected(1, client: "renewing", renews: true, at: server.at(0))
        server.leases.connected(2, client: "old", renews: false, at: server.at(0))
        XCTAssertTrue(server.sweep(until: 4000).isEmpty)
        server.leases.renewed(1, at: server.at(4000))
        XCTAssertTrue(server.sweep(until: 8500).isEmpty, "expired before the lease ran out")
        XCTAssertEqual(server.sweep(until: 9000).map(\.session), [1], "a connected client that stopped renewing kept its locks")
        server.holders = [2]
        XCTAssertTrue(server.sweep(until: 600_000).isEmpty, "an old client's lease ran out while it was connected, or one ran out twice")
        server.leases.disconnected(2, at: server.at(600_000))
        XCTAssertTrue(server.sweep(until: 604_500).isEmpty)
        XCTAssertEqual(server.sweep(until: 605_000).map(\.client), ["old"])
    }

    /// A server that did not run for a while (stopped, its machine paused)
    /// heard no renewal meanwhile: its clients keep their locks for a new lease.
    func testAServerThatDidNotRunGivesEverySessionANewLease() {
        var server = SweepingServer(lease: 10_000, holders: [1])
        server.leases.connected(1, client: "renewing", renews: true, at: server.at(0))
        XCTAssertTrue(server.sweep(until: 1000).isEmpty)
        XCTAssertTrue(server.leases.expired(holders: [1], at: server.at(61_000)).isEmpty, "a client lost its locks to the server's own pause")
        server.now = 61_000
        XCTAssertTrue(server.sweep(until: 70_000).isEmpty)
        XCTAssertEqual(server.sweep(until: 71_000).map(\.session), [1], "the new lease never ran out")
    }

    /// Locks that came with the journal (a failover) get a whole lease from
    /// the first look; a session with no locks and no connection is forgotten.
    func testASessionFirstSeenWithLocksGetsAWholeLease() {
        var server = SweepingServer(lease: 1000, holders: [7])
        XCTAssertTrue(server.sweep(until: 100).isEmpty)
        XCTAssertEqual(server.leases.client(of: 7), "a client of the server before")
        server.leases.connected(7, client: "back", renews: true, at: server.at(500))
        XCTAssertTrue(server.sweep(until: 1400).isEmpty, "the reconnection did not renew")
        XCTAssertEqual(server.sweep(until: 1500).map(\.client), ["back"])
        server.leases.disconnected(7, at: server.at(2000))
        server.holders = []
        _ = server.sweep(until: 2100)
        XCTAssertNil(server.leases.client(of: 7), "a session with nothing left stayed in memory")
    }

    /// A session that lost its locks to its lease is told on the file until it lets go of it.
    func testLocksLostToTheLeaseMarkTheFileUntilItsOwnerLetsGo() {
        var table = LockTable()
        XCTAssertEqual(table.apply(file, request(bob, .exclusive, 0, 9)), .granted)
        XCTAssertEqual(table.apply(file + 1, request(carol, .shared, 0, 0)), .granted)
        XCTAssertEqual(table.apply(file + 2, request(alice, .shared, 0, 0)), .granted)
        XCTAssertEqual(table.expireSession(2), [file, file + 1])
        XCTAssertTrue(table.hasLost(2, file) && table.hasLost(2, file + 1))
        XCTAssertFalse(table.hasLost(1, file + 2), "another session's file was marked")
        XCTAssertEqual(held(table), [])
        table.release(file, owner: carol, family: .fcntl)
        XCTAssertFalse(table.hasLost(2, file), "letting go of the file kept it marked")
        XCTAssertTrue(table.hasLost(2, file + 1))
        table.forget(file + 1)
        XCTAssertTrue(table.lost.isEmpty, "a freed file stayed marked: \(table.lost)")
    }

    /// Random requests of three owners, checked byte by byte against a model
    /// in which each byte knows each owner's kind.
    func testRandomRequestsAgreeWithAByteModel() {
        var generator = SplitMix(seed: 0xB7_70_0C)
        let owners = [alice, bob, carol]
        for _ in 0..<200 {
            var table = LockTable()
            var model = [[LockTable.Owner: LockTable.Kind]](repeating: [:], count: 32)
            for _ in 0..<60 {
                let owner = owners[Int(generator.next() % 3)]
                let start = generator.next() % 32, end = min(31, start + generator.next() % 12)
                let kind: LockTable.Kind? = [nil, .shared, .exclusive][Int(generator.next() % 3)]
                let wanted = request(owner, kind, start, end)
                let free = (start...end).allSatisfy { byte in
                    model[Int(byte)].allSatisfy { other, held in other == owner || kind == nil || !held.conflicts(kind!) }
                }
                let outcome = table.apply(file, wanted)
                XCTAssertEqual(outcome == .granted, free, "\(wanted) on \(held(table))")
                if free { for byte in start...end { model[Int(byte)][owner] = kind } }
                // The table holds exactly the model, and one owner's locks of a kind never adjoin.
                var fromTable = [[LockTable.Owner: LockTable.Kind]](repeating: [:], count: 32)
                for lock in table.locks[file] ?? [] {
                    for byte in lock.range.start...min(31, lock.range.end) { fromTable[Int(byte)][lock.owner] = lock.kind }
                }
                XCTAssertEqual(fromTable, model)
                XCTAssertEqual(table.count, table.locks.values.map(\.count).reduce(0, +), "the count drifted")
                let locks = table.locks[file] ?? []
                for (index, lock) in locks.enumerated() {
                    for other in locks[(index + 1)...] where other.owner == lock.owner && other.kind == lock.kind {
                        XCTAssertFalse(lock.range.start <= other.range.end + 1 && other.range.start <= lock.range.end + 1,
                                       "unmerged: \(lock) and \(other)")
                    }
                }
            }
        }
    }
}

extension LockTable.Kind {
    fileprivate func conflicts(_ other: LockTable.Kind) -> Bool { self == .exclusive || other == .exclusive }
}

/// A small seeded generator, so a failure replays.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Looks at the leases as the server does: every tenth of the lease.
private struct SweepingServer {
    var leases: LockLeases
    var holders: Set<UInt64>
    /// Milliseconds since the start.
    var now: UInt64 = 0
    private let every: UInt64

    init(lease: UInt64, holders: Set<UInt64>) {
        leases = LockLeases(lease: .milliseconds(lease))
        self.holders = holders
        every = lease / 10
    }

    func at(_ ms: UInt64) -> Instant { Instant(nanoseconds: 1_000_000_000) + .milliseconds(ms) }

    /// The sessions whose lease ran out up to `ms`.
    mutating func sweep(until ms: UInt64) -> [(session: UInt64, client: String)] {
        var gone: [(session: UInt64, client: String)] = []
        while now + every <= ms {
            now += every
            gone += leases.expired(holders: holders, at: at(now))
        }
        return gone
    }
}
