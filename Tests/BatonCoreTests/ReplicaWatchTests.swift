// Goal: the standby's monitor, whose failure declaration takes the export
// over with this replica, watches only a server whose replies wait for the
// replica, once the replica holds every record answered without it
// (DESIGN.md §4.1: no acknowledged mutation is lost by a failover).
@testable import BatonCore
import XCTest

final class ReplicaWatchTests: XCTestCase {
    private let limit = TimeSpan.milliseconds(4_000)

    func testTheMonitorWatchesOnlyOnceTheReplicaHoldsWhatTheServerAnsweredWithoutIt() {
        var watch = ReplicaWatch()
        XCTAssertEqual(watch.handle(.applied(5)), [], "records alone start no monitor: the server may answer without them")
        XCTAssertEqual(watch.handle(.repliesWait(through: 9, applied: 5)), [])
        XCTAssertEqual(watch.handle(.applied(8)), [])
        XCTAssertEqual(watch.handle(.applied(9)), [.startMonitor])
        XCTAssertTrue(watch.isWatching)
        XCTAssertEqual(watch.handle(.applied(10)), [], "started twice")

        var inStep = ReplicaWatch()
        XCTAssertEqual(inStep.handle(.repliesWait(through: 4, applied: 4)), [.startMonitor])
    }

    func testWhatMayLetTheServerAnswerAloneEndsTheWatchUntilItsNextRepliesWait() {
        let stops: [(ReplicaWatch.Event, [ReplicaWatch.Action])] = [
            (.sessionBegan, [.stopMonitor]),
            (.copyInstalling, [.stopMonitor]),
            (.serverAnswersAlone, [.stopMonitor]),
            // The peer asked to answer without this replica: its session ends too, so the next one says `repliesWait`.
            (.stoodDown, [.stopMonitor, .endSession]),
            (.agentResumed(gap: limit, limit: limit), [.stopMonitor, .endSession]),
        ]
        for (event, actions) in stops {
            var watch = watching()
            XCTAssertEqual(watch.handle(event), actions, "\(event)")
            XCTAssertFalse(watch.isWatching, "\(event)")
            XCTAssertEqual(watch.handle(.applied(100)), [], "\(event): watching again without a new repliesWait")
            XCTAssertEqual(watch.handle(.repliesWait(through: 3, applied: 100)), [.startMonitor], "\(event)")
        }
        var shortGap = watching()
        XCTAssertEqual(shortGap.handle(.agentResumed(gap: .milliseconds(3_999), limit: limit)), [])
        XCTAssertTrue(shortGap.isWatching)
        // Waiting for records, a long gap also ends the session: the server may have gone alone meanwhile.
        var waiting = ReplicaWatch()
        _ = waiting.handle(.repliesWait(through: 9, applied: 1))
        XCTAssertEqual(waiting.handle(.agentResumed(gap: limit, limit: limit)), [.endSession])
        XCTAssertEqual(waiting.handle(.applied(9)), [], "a repliesWait from before the gap started the monitor")
        var standingDown = ReplicaWatch()
        XCTAssertEqual(standingDown.handle(.stoodDown), [.endSession], "no monitor to stop, but the session ends all the same")
    }

    func testDuringASwapNothingButTheSwapDecidesWhetherTheMonitorWatches() {
        var watch = watching()
        XCTAssertEqual(watch.handle(.swapBegan), [.stopMonitor])
        for event: ReplicaWatch.Event in [.repliesWait(through: 1, applied: 9), .applied(10), .sessionBegan, .stoodDown,
                                          .serverAnswersAlone, .agentResumed(gap: limit, limit: limit)] {
            XCTAssertEqual(watch.handle(event), [], "\(event) acted during a swap")
        }
        var again = watch
        XCTAssertEqual(again.handle(.swapEnded(watch: true)), [.startMonitor])
        XCTAssertEqual(watch.handle(.swapEnded(watch: false)), [])
        XCTAssertFalse(watch.isWatching)
        XCTAssertEqual(watch.handle(.repliesWait(through: 2, applied: 2)), [.startMonitor])
    }

    /// Against a model written out: after any sequence of events, the
    /// monitor watches once a `repliesWait` (through T) came after the last
    /// event that may have let the server answer alone and the replica has
    /// applied T, or when a swap ended asking it to; never during a swap.
    func testAnySequenceOfEventsKeepsTheWatchToItsRule() {
        var random = SplitMix64(seed: 7)
        for _ in 0..<2_000 {
            var watch = ReplicaWatch()
            var monitorRuns = false
            var modelWatches = false
            var pending: UInt64?
            var applied: UInt64 = 0
            var swapping = false
            for _ in 0..<30 {
                let event: ReplicaWatch.Event
                switch random.next() % 9 {
                case 0: event = .sessionBegan
                case 1: event = .repliesWait(through: applied + random.next() % 3, applied: applied)
                case 2: applied += random.next() % 3; event = .applied(applied)
                case 3: event = .copyInstalling
                case 4: event = .serverAnswersAlone
                case 5: event = .stoodDown
                case 6: event = .agentResumed(gap: .milliseconds(3_000 + random.next() % 2_000), limit: limit)
                case 7: event = swapping ? .swapEnded(watch: random.next() % 2 == 0) : .swapBegan
                default: event = .applied(applied)
                }
                for action in watch.handle(event) {
                    switch action {
                    case .startMonitor: XCTAssertFalse(monitorRuns, "started twice"); monitorRuns = true
                    case .stopMonitor: XCTAssertTrue(monitorRuns, "stopped none"); monitorRuns = false
                    case .endSession: break
                    }
                }
                // The model.
                switch event {
                case .swapBegan: swapping = true; modelWatches = false; pending = nil
                case .swapEnded(let again): swapping = false; modelWatches = again
                case _ where swapping: break
                case .repliesWait(let through, _) where !modelWatches: pending = through
                case .sessionBegan, .copyInstalling, .serverAnswersAlone, .stoodDown: modelWatches = false; pending = nil
                case .agentResumed(let gap, let limit) where gap >= limit: modelWatches = false; pending = nil
                default: break
                }
                if !modelWatches, let through = pending, applied >= through { modelWatches = true; pending = nil }
                XCTAssertEqual(monitorRuns, modelWatches, "after \(event)")
                XCTAssertEqual(watch.isWatching, monitorRuns)
            }
        }
    }

    private func watching() -> ReplicaWatch {
        var watch = ReplicaWatch()
        _ = watch.handle(.repliesWait(through: 1, applied: 1))
        precondition(watch.isWatching)
        return watch
    }
}
