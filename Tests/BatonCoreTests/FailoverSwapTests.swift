// Goal: the swap runs the steps of DESIGN.md §5 in order, persists the new
// epoch before anything announces it, refuses the old epoch's records from
// the moment the epoch is decided, and handles the peer being gone, a second
// failure and a migration that cannot finish.
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

    @discardableResult
    mutating func wait(_ milliseconds: UInt64) -> [Swap.Action] {
        now = now + .milliseconds(milliseconds)
        return on(.tick)
    }

    /// Through the fence to the running new server.
    mutating func promote() {
        on(.begin)
        on(.fenceConfirmed)
        on(.epochPersisted(swap.newEpoch))
        on(.tailReplayed)
        on(.serverStarted)
    }
}

final class FailoverSwapTests: XCTestCase {
    // §5: "2. Fence ... 3. B's agent sets epoch e+1, replays the journal tail not yet applied, starts server S' on B
    // ... 4. B's agent asks A's agent to start monitor M' on A for S' ... 5. M on B terminates."
    func testFailoverRunsTheStepsOfTheDesignInOrder() {
        var d = SwapDriver()
        XCTAssertEqual(d.on(.begin), [.fence(epoch: 7)])
        XCTAssertEqual(d.on(.fenceConfirmed), [.persistEpoch(8)])
        XCTAssertEqual(d.on(.epochPersisted(8)), [.replayTail])
        XCTAssertEqual(d.on(.tailReplayed), [.startServer(epoch: 8)])
        // A's replica may hold epoch-7 records B never received: it catches up before M' starts.
        XCTAssertEqual(d.on(.serverStarted), [.catchUpPeer(epoch: 8)])
        XCTAssertEqual(d.on(.peerCaughtUp), [.requestMonitor(epoch: 8)])
        XCTAssertEqual(d.on(.monitorStarted), [.retireMonitor])
        XCTAssertEqual(d.on(.retired), [.completed(epoch: 8)])
        XCTAssertTrue(d.swap.isFinished)
    }

    // STYLE.md, from etcd: "state is persisted *before* messages are sent"; §4.2 "Every promotion bumps the export's *epoch*."
    func testNothingOfTheNewEpochGoesOutBeforeItIsPersisted() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.fenceConfirmed), [.persistEpoch(8)])
        // A slow disk: time passes, remote parties talk; nothing may start the server meanwhile.
        for _ in 0..<20 { d.wait(100) }
        d.on(.monitorStarted)
        d.on(.peerReturned)
        d.on(.fenceConfirmed)
        XCTAssertEqual(d.log, [.fence(epoch: 7), .persistEpoch(8)])
        XCTAssertEqual(d.on(.epochPersisted(8)), [.replayTail])
    }

    // §4.2: "The standby refuses journal records from an older epoch ... a fenced server that wakes up can acknowledge nothing"
    func testOldEpochRecordsAreAcceptedUntilTheEpochIsDecidedThenRefused() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.acceptRecord], "a slow server's records still count while fencing")
        d.on(.fenceConfirmed)
        XCTAssertEqual(d.swap.acceptedEpoch, 8)
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.refuseRecord(epoch: 7), .fenceStaleServer(epoch: 7)],
                       "refused already while the epoch is being persisted")
        d.on(.epochPersisted(8))
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.refuseRecord(epoch: 7)], "fenced once, refused always")
        XCTAssertEqual(d.on(.recordArrived(epoch: 3)), [.refuseRecord(epoch: 3)])
    }

    func testARecordOfANewerEpochStopsTheSwap() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.recordArrived(epoch: 8)), [.refuseRecord(epoch: 8), .failed(.newerEpochSeen(8))])
        XCTAssertEqual(d.on(.fenceConfirmed), [], "no promotion after another node promoted")
    }

    // §5.2: "If A's agent cannot be reached, the diagnostic ladder (section 6) decides whether A is dead or isolated"
    func testUnansweredFenceRunsTheLadderAndADeadPeerIsTakenOver() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.wait(200), [])
        XCTAssertEqual(d.wait(50), [.runDiagnosis])
        XCTAssertEqual(d.on(.diagnosed(.peerDeadOrIsolated)), [.raiseAlarm(.fenceUnconfirmed), .persistEpoch(8)])
    }

    func testRefusedConnectionRunsTheLadderAtOnce() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.peerUnreachable), [.runDiagnosis])
    }

    // §6: "peer agent down, peer OS up | ... take over the peer's exports after fencing them through the OS-level path if possible; raise an alarm"
    func testPeerAgentDownFencesThroughTheOperatingSystemThenTakesOver() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.diagnosed(.peerAgentDown)), [.raiseAlarm(.peerAgentDown), .fenceThroughOperatingSystem(epoch: 7)])
        XCTAssertEqual(d.on(.fenceConfirmed), [.persistEpoch(8)])

        var unconfirmed = SwapDriver()
        unconfirmed.on(.begin)
        unconfirmed.on(.peerUnreachable)
        unconfirmed.on(.diagnosed(.peerAgentDown))
        XCTAssertEqual(unconfirmed.wait(250), [.raiseAlarm(.fenceUnconfirmed), .persistEpoch(8)],
                       "\"if possible\": without it the epoch rule keeps the takeover safe")
    }

    // §6: "this node reaches no switch at all | *this* node is the isolated one"
    func testSelfIsolatedNodeDoesNotPromote() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.diagnosed(.selfIsolated)), [.failed(.selfIsolated)])
        d.wait(10_000)
        d.on(.fenceConfirmed)
        XCTAssertFalse(d.log.contains(.persistEpoch(8)))
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.acceptRecord], "the epoch never changed")
    }

    // §6: "a peer NIC down | move ... traffic to the redundant NIC; no failover" — the fence goes over the other path.
    func testReachablePeerIsAskedAgainThenTakenOverAfterTheLastAttempt() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.diagnosed(.peerNICDown(.first))), [.fence(epoch: 7)])
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.diagnosed(.allHealthy)), [.fence(epoch: 7)])
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.diagnosed(.switchDown(.second))), [.raiseAlarm(.fenceUnconfirmed), .persistEpoch(8)])
    }

    func testLateFenceConfirmationWhileDiagnosingProceedsAndTheLateVerdictIsIgnored() {
        var d = SwapDriver()
        d.on(.begin)
        d.on(.peerUnreachable)
        XCTAssertEqual(d.on(.fenceConfirmed), [.persistEpoch(8)])
        XCTAssertEqual(d.on(.diagnosed(.peerDeadOrIsolated)), [])
    }

    // §5.4: "or, if A is down, M' starts on A when A returns, after A's replica has caught up (A first discards any
    // journal records of epoch e that B never received; they were never acknowledged)."
    func testMonitorWaitsForThePeerToReturnAndCatchUp() {
        var d = SwapDriver()
        d.promote()
        XCTAssertEqual(d.wait(1000), [.raiseAlarm(.unmonitored)], "the peer did not answer the catch-up")
        XCTAssertEqual(d.wait(60_000), [], "no retries while the peer is away")
        XCTAssertEqual(d.on(.peerReturned), [.catchUpPeer(epoch: 8)])
        XCTAssertEqual(d.on(.peerUnreachable), [.raiseAlarm(.unmonitored)], "gone again during the catch-up")
        XCTAssertEqual(d.on(.peerReturned), [.catchUpPeer(epoch: 8)])
        XCTAssertEqual(d.on(.peerCaughtUp), [.requestMonitor(epoch: 8)])
        XCTAssertEqual(d.wait(1000), [.raiseAlarm(.unmonitored)], "gone again before it confirmed the monitor")
        XCTAssertEqual(d.on(.peerReturned), [.catchUpPeer(epoch: 8)])
        XCTAssertEqual(d.on(.peerCaughtUp), [.requestMonitor(epoch: 8)])
        XCTAssertEqual(d.on(.monitorStarted), [.retireMonitor])
        XCTAssertEqual(d.on(.retired), [.completed(epoch: 8)])
    }

    // Brief: "a second failure during a swap": the new server dies before the swap is done.
    func testNewServerDyingDuringTheSwapIsRestartedAtTheSameEpochWithinALimit() {
        var d = SwapDriver()
        d.promote()
        XCTAssertEqual(d.on(.serverExited), [.startServer(epoch: 8)], "same epoch: the exit is local and certain")
        XCTAssertEqual(d.on(.serverStarted), [])
        XCTAssertEqual(d.on(.peerCaughtUp), [.requestMonitor(epoch: 8)])
        XCTAssertEqual(d.on(.monitorStarted), [.retireMonitor])
        XCTAssertEqual(d.on(.serverExited), [.startServer(epoch: 8)])
        XCTAssertEqual(d.on(.serverStartFailed), [.failed(.serverWouldNotStart)], "three starts in all")
        XCTAssertEqual(d.log.filter { if case .persistEpoch = $0 { true } else { false } }.count, 1)
    }

    func testASecondDeclarationDoesNotStartASecondPromotion() {
        var d = SwapDriver()
        d.on(.begin)
        XCTAssertEqual(d.on(.failureDeclared(.heartbeatGap(silence: .milliseconds(600)))), [])
        d.on(.fenceConfirmed)
        XCTAssertEqual(d.on(.failureDeclared(.probesMissed(count: 3))), [])
        XCTAssertEqual(d.log, [.fence(epoch: 7), .persistEpoch(8)])
    }

    func testLocalFailuresStopTheSwapBeforeAServerStarts() {
        var persist = SwapDriver()
        persist.on(.begin)
        persist.on(.fenceConfirmed)
        XCTAssertEqual(persist.on(.epochPersistFailed), [.failed(.epochNotPersisted)])

        var replay = SwapDriver()
        replay.on(.begin)
        replay.on(.fenceConfirmed)
        replay.on(.epochPersisted(8))
        XCTAssertEqual(replay.on(.tailUnreadable), [.failed(.tailUnreadable)])
        XCTAssertFalse((persist.log + replay.log).contains(.startServer(epoch: 8)))
    }

    // §5: "A planned migration (`baton migrate`) is the same swap without the failure: S stops taking new requests,
    // the last records reach the standby, the standby promotes, S exits, clients move"
    func testMigrationQuiescesDrainsPromotesAndStopsTheOldServer() {
        var d = SwapDriver(.migration)
        XCTAssertEqual(d.on(.begin), [.quiesceServer(epoch: 7)])
        d.on(.replicaReceived(upTo: 40))
        XCTAssertEqual(d.on(.serverQuiesced(lastSequence: 42)), [], "two records still on their way")
        XCTAssertEqual(d.on(.replicaReceived(upTo: 41)), [])
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.acceptRecord], "the drain is of epoch-7 records")
        XCTAssertEqual(d.on(.replicaReceived(upTo: 42)), [.persistEpoch(8)])
        XCTAssertEqual(d.on(.epochPersisted(8)), [.replayTail])
        XCTAssertEqual(d.on(.tailReplayed), [.startServer(epoch: 8)])
        XCTAssertEqual(d.on(.serverStarted), [.stopOldServer(epoch: 7), .catchUpPeer(epoch: 8)])
        XCTAssertEqual(d.on(.peerCaughtUp), [.requestMonitor(epoch: 8)])
        XCTAssertEqual(d.on(.monitorStarted), [.retireMonitor])
        XCTAssertEqual(d.on(.retired), [.completed(epoch: 8)])
        XCTAssertFalse(d.log.contains(.fence(epoch: 7)), "a healthy server is not killed")
    }

    func testMigrationWhoseRecordsArrivedFirstPromotesOnTheQuiesce() {
        var d = SwapDriver(.migration)
        d.on(.begin)
        d.on(.replicaReceived(upTo: 42))
        XCTAssertEqual(d.on(.serverQuiesced(lastSequence: 42)), [.persistEpoch(8)])
    }

    // §1: the admin expects "planned migration with a pause far below a second; clear state; clear errors"
    func testMigrationThatCannotDrainInTimeChangesNothing() {
        var d = SwapDriver(.migration)
        d.on(.begin)
        d.on(.serverQuiesced(lastSequence: 42))
        XCTAssertEqual(d.wait(199), [])
        XCTAssertEqual(d.wait(1), [.resumeServer(epoch: 7), .failed(.migrationTimedOut)])
        XCTAssertFalse(d.swap.epochDecided)
        XCTAssertEqual(d.on(.recordArrived(epoch: 7)), [.acceptRecord])

        var silent = SwapDriver(.migration)
        silent.on(.begin)
        XCTAssertEqual(silent.wait(100), [.resumeServer(epoch: 7), .failed(.migrationTimedOut)])
    }

    func testMigrationWhoseServerIsDeclaredFailedBecomesAFailover() {
        var d = SwapDriver(.migration)
        d.on(.begin)
        d.on(.serverQuiesced(lastSequence: 42))
        XCTAssertEqual(d.on(.failureDeclared(.probesMissed(count: 3))), [.fence(epoch: 7)])
        XCTAssertEqual(d.swap.kind, .failover(.probesMissed(count: 3)))
        d.wait(300)
        XCTAssertFalse(d.log.contains(.resumeServer(epoch: 7)), "the migration deadline no longer applies")
    }
}
