// Goal: the swap the agent runs does the steps of DESIGN.md §5 in order,
// persists the new epoch before the promotion announces it, refuses the old
// epoch's records from the fence on, takes a peer over without its fence
// only once the ladder found it gone for the takeover delay, and never takes
// over a peer that is heard: it gives up after a bounded number of fences.
// Method: drive the state machine event by event with a hand-advanced clock
// and compare the exact actions; a failing step shows as a different action list.
@testable import BatonCore
import XCTest

private struct SwapDriver {
    var swap: Swap
    var now = Instant.zero
    var log: [Swap.Action] = []

    init(_ kind: Swap.Kind = .failover(.probesMissed(count: 3)), epoch: UInt64 = 7, timings: SwapTimings = .defaults) {
        swap = Swap(kind: kind, oldEpoch: epoch, timings: timings)
    }

    @discardableResult
    mutating func on(_ event: Swap.Event) -> [Swap.Action] {
        let actions = swap.handle(event, at: now)
        log += actions
        return actions
    }

    /// Time passes; the peer as given.
    @discardableResult
    mutating func wait(_ milliseconds: UInt64, peer: Swap.PeerReach = .heard) -> [Swap.Action] {
        now = now + .milliseconds(milliseconds)
        return on(.tick(peer: peer))
    }
}

private extension Swap.PeerReach {
    static let heard = Swap.PeerReach(selfIsolated: false, foundGoneAt: nil, heardOnSomePath: true, lastHeard: .zero)
    static func gone(at foundGoneAt: Instant, lastHeard: Instant) -> Self {
        .init(selfIsolated: false, foundGoneAt: foundGoneAt, heardOnSomePath: false, lastHeard: lastHeard)
    }
    static let silentUndiagnosed = Swap.PeerReach(selfIsolated: false, foundGoneAt: nil, heardOnSomePath: false, lastHeard: .zero)
    static let isolatedHere = Swap.PeerReach(selfIsolated: true, foundGoneAt: nil, heardOnSomePath: false, lastHeard: .zero)
}

final class FailoverSwapTests: XCTestCase {
    // §5: "2. Fence ... 3. B's agent sets epoch e+1, replays the journal tail not yet applied, starts server S' on B"
    func testFailoverRunsTheStepsOfTheDesignInOrder() {
        var d = SwapDriver()
        XCTAssertEqual(d.on(.begin), [.stopMonitor, .refuseOldRecords, .startNextServer, .fence(epoch: 7, handOver: false)])
        XCTAssertEqual(d.on(.nextServerReady), [])
        XCTAssertEqual(d.on(.fenceAnswered(fenced: true)), [.writeWarmCheckpoint])
        XCTAssertEqual(d.on(.checkpointWritten), [.persistEpoch(8)])
        XCTAssertEqual(d.on(.epochPersisted), [.promote(epoch: 8)])
        XCTAssertEqual(d.on(.promoted), [.completed(epoch: 8)])
        XCTAssertTrue(d.swap.isFinished)
    }

    // STYLE.md, from etcd: "state is persisted *before* messages are sent"; §4.2 "Every promotion bumps the export's *epoch*."
    func testNothingOfTheNewEpochIsAnnouncedBeforeItIsPersisted() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.nextServerReady)
        d.on(.fenceAnswered(fenced: true))
        XCTAssertEqual(d.on(.checkpointWritten), [.persistEpoch(8)])
        // A slow disk: time passes, late answers come; nothing may promote meanwhile.
        for _ in 0..<20 { d.wait(100) }
        d.on(.fenceAnswered(fenced: true))
        XCTAssertFalse(d.log.contains(.promote(epoch: 8)))
        XCTAssertEqual(d.on(.epochPersisted), [.promote(epoch: 8)])
    }

    func testAPersistedEpochWaitsForTheNextServerToBeReady() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.fenceAnswered(fenced: true))
        d.on(.checkpointWritten)
        XCTAssertEqual(d.on(.epochPersisted), [], "the next server is still starting")
        XCTAssertEqual(d.on(.nextServerReady), [.promote(epoch: 8)])
    }

    // §4.2: "The standby refuses journal records from an older epoch ... a fenced server that wakes up can acknowledge nothing"
    func testAFailoverRefusesOldRecordsAtOnceAMigrationOnlyAfterTheHandOver() {
        var failover = SwapDriver()
        XCTAssertTrue(failover.on(.begin).contains(.refuseOldRecords))
        XCTAssertFalse(failover.swap.takesOldRecords)

        var migration = SwapDriver(.migration)
        XCTAssertEqual(migration.on(.begin), [.stopMonitor, .startNextServer])
        XCTAssertEqual(migration.on(.nextServerReady), [.fence(epoch: 7, handOver: true)])
        XCTAssertTrue(migration.swap.takesOldRecords, "the old server's last records arrive while it hands over")
        XCTAssertEqual(migration.on(.fenceAnswered(fenced: true)), [.refuseOldRecords, .writeWarmCheckpoint])
        XCTAssertFalse(migration.swap.takesOldRecords)
    }

    // §6: the peer found dead, isolated or without its agent is taken over after the takeover delay.
    func testAnUnansweredFenceTakesAGonePeerOverOnlyAfterTheTakeoverDelay() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.nextServerReady)
        d.now = .milliseconds(1_000)
        XCTAssertEqual(d.on(.fenceUnanswered), [.diagnosePeer])
        let lastHeard = Instant.milliseconds(500)
        XCTAssertEqual(d.wait(100, peer: .silentUndiagnosed), [], "the ladder has not decided yet")
        // Found gone at 1.1 s, last heard at 0.5 s: the takeover waits until 3.0 s.
        let gone = Swap.PeerReach.gone(at: .milliseconds(1_100), lastHeard: lastHeard)
        XCTAssertEqual(d.wait(1_800, peer: gone), [])
        XCTAssertEqual(d.wait(100, peer: gone), [.raiseAlarm(.fenceUnconfirmed), .writeWarmCheckpoint])
    }

    // The simulation's seed 200: the peer's agent was found down, then this node was cut off and its monitor
    // declared the server failed; the old verdict said "gone" before this node's ladder found itself isolated.
    func testOnlyAVerdictReachedAfterTheUnansweredFenceTakesThePeerOver() {
        var d = SwapDriver()
        d.now = .milliseconds(5_000)
        d.on(.begin)
        d.on(.nextServerReady)
        XCTAssertEqual(d.on(.fenceUnanswered), [.diagnosePeer], "the ladder runs again")
        let stale = Swap.PeerReach.gone(at: .milliseconds(1_000), lastHeard: .milliseconds(500))
        for _ in 0..<10 { XCTAssertEqual(d.wait(100, peer: stale), []) }
        XCTAssertEqual(d.wait(100, peer: .isolatedHere), [.abandonNextServer, .returnToStandby(watch: false), .failed(.selfIsolated)])
    }

    // The simulation's seed 1780: this node was frozen longer than the old server waits for it, and the old
    // server answered alone; a takeover after the freeze would serve a copy without those writes.
    func testAnAgentThatDidNotRunForTheWaitLimitDoesNotTakeOver() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.nextServerReady)
        d.on(.fenceUnanswered)
        XCTAssertEqual(d.on(.agentResumed(gap: .milliseconds(600))), [], "an ordinary hiccup")
        XCTAssertEqual(d.on(.agentResumed(gap: .milliseconds(6_000))),
                       [.abandonNextServer, .returnToStandby(watch: false), .failed(.replicaMayBeOutdated)])
        var decided = SwapDriver()
        decided.on(.begin)
        decided.on(.fenceAnswered(fenced: true))
        XCTAssertEqual(decided.on(.agentResumed(gap: .milliseconds(6_000))), [], "after the fence the old server is gone")
    }

    func testASelfIsolatedNodeDoesNotPromote() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.nextServerReady)
        d.on(.fenceUnanswered)
        XCTAssertEqual(d.wait(20, peer: .isolatedHere),
                       [.abandonNextServer, .returnToStandby(watch: false), .failed(.selfIsolated)])
        XCTAssertTrue(d.swap.takesOldRecords)
    }

    // The old rule took over after the last attempt, peer heard or not. With `standby_wait_limit_ms` a live old
    // server answers alone 5 s after its standby stopped taking records: two servers would acknowledge.
    func testAHeardPeerIsAskedAgainABoundedNumberOfTimesAndNeverTakenOver() {
        let timings = SwapTimings(fenceRetryInterval: .milliseconds(200), maxFenceAttempts: 3,
                                  takeoverDelay: .milliseconds(2_500), maxServerStarts: 3, standbyWaitLimit: .milliseconds(5_000))
        var d = SwapDriver(timings: timings)
        d.on(.begin)
        d.on(.nextServerReady)
        for _ in 1..<3 {
            XCTAssertEqual(d.on(.fenceUnanswered), [.diagnosePeer])
            XCTAssertEqual(d.wait(100), [], "asked again only after the retry interval")
            XCTAssertEqual(d.wait(100), [.fence(epoch: 7, handOver: false)])
        }
        d.on(.fenceUnanswered)
        XCTAssertEqual(d.wait(200), [.abandonNextServer, .returnToStandby(watch: true), .failed(.fenceUnanswered)])
        XCTAssertFalse(d.log.contains(.writeWarmCheckpoint))
        XCTAssertFalse(d.log.contains(.raiseAlarm(.fenceUnconfirmed)))
    }

    func testAPeerSilentOnEveryPathIsNotAskedAgainWhileTheLadderDecides() {
        var d = SwapDriver(timings: SwapTimings(fenceRetryInterval: .milliseconds(200), maxFenceAttempts: 1,
                                                takeoverDelay: .milliseconds(2_500), maxServerStarts: 3, standbyWaitLimit: .milliseconds(5_000)))
        d.on(.begin)
        d.on(.fenceUnanswered)
        for _ in 0..<50 { XCTAssertEqual(d.wait(100, peer: .silentUndiagnosed), []) }
        XCTAssertFalse(d.swap.isFinished, "the last attempt does not run out while nothing is known")
    }

    func testALateFenceAnswerWhileAwaitingTheVerdictGoesOn() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.fenceUnanswered)
        XCTAssertEqual(d.on(.fenceAnswered(fenced: true)), [.writeWarmCheckpoint])
        // The verdict that comes after it changes nothing.
        XCTAssertEqual(d.wait(3_000, peer: .gone(at: .milliseconds(2_000), lastHeard: .zero)), [])
    }

    // §4.7, stop 16: a server that answered writes its standby lacks refuses the fence and serves again.
    func testARefusedFenceLeavesTheOldServerServingAndTheMonitorWatching() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.fenceAnswered(fenced: false)),
                       [.abandonNextServer, .returnToStandby(watch: true), .failed(.fenceRefused)])
        XCTAssertEqual(d.on(.nextServerReady), [], "a next server ready after the end is abandoned by the executor")
    }

    func testANextServerThatFailsIsStartedAgainWithinALimit() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.nextServerFailed), [.raiseAlarm(.nextServerRestarted), .startNextServer])
        d.on(.fenceAnswered(fenced: true))
        d.on(.checkpointWritten)
        XCTAssertEqual(d.on(.epochPersisted), [])
        XCTAssertEqual(d.on(.nextServerFailed), [.raiseAlarm(.nextServerRestarted), .startNextServer])
        XCTAssertEqual(d.on(.nextServerFailed), [.returnToStandby(watch: true), .failed(.serverWouldNotStart)])
    }

    func testAFailedPromotionStartsAnotherNextServerAndPromotesIt() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.nextServerReady)
        d.on(.fenceAnswered(fenced: true))
        d.on(.checkpointWritten)
        d.on(.epochPersisted)
        XCTAssertEqual(d.on(.promotionFailed), [.raiseAlarm(.nextServerRestarted), .startNextServer])
        XCTAssertEqual(d.on(.nextServerReady), [.promote(epoch: 8)])
        XCTAssertEqual(d.on(.promoted), [.completed(epoch: 8)])
    }

    func testLocalFailuresStopTheSwapWithoutAPromotion() {
        var persist = SwapDriver()
        persist.on(.begin)
        persist.on(.nextServerReady)
        persist.on(.fenceAnswered(fenced: true))
        XCTAssertEqual(persist.on(.checkpointFailed), [.raiseAlarm(.checkpointNotWritten), .persistEpoch(8)],
                       "without a warm checkpoint the new server replays: slower, nothing lost")
        XCTAssertEqual(persist.on(.epochPersistFailed),
                       [.abandonNextServer, .returnToStandby(watch: true), .failed(.epochNotPersisted)])

        var migration = SwapDriver(.migration)
        migration.on(.begin)
        XCTAssertEqual(migration.on(.nextServerFailed), [.returnToStandby(watch: true), .failed(.serverWouldNotStart)],
                       "a migration whose next server does not start changes nothing")
        XCTAssertFalse(migration.log.contains { if case .fence = $0 { true } else { false } })
    }
}
