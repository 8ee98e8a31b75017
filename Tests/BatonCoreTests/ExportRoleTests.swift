// Goal (issue 8): the agent's decisions about an export outside the swap are
// pure and checked here: where it is served at start-up (DESIGN.md §4.7: a
// node serves without hearing its peer only with a copy provably newest),
// after a self-fence, after a fence; how often a crashed server is restarted.
// Method: every combination of the facts against the rule written out.
import BatonCore
import XCTest

final class ExportRoleTests: XCTestCase {
    private func copy(new: Bool = false, served: Bool = false, alone: Bool = false, preferred: Bool = false) -> ExportRole.LocalCopy {
        ExportRole.LocalCopy(isNew: new, servedHere: served, answeredAlone: alone, preferredHere: preferred)
    }

    func testAtStartANodeServesWithoutItsPeerOnlyWithACopyProvablyNewest() {
        for new in [false, true] {
            for served in [false, true] {
                for alone in [false, true] {
                    for preferred in [false, true] {
                        for peerServes in [nil, false, true] as [Bool?] {
                            let facts = copy(new: new, served: served, alone: alone, preferred: preferred)
                            let decided = ExportRole.start(facts, peerServes: peerServes)
                            let ours = peerServes != true && (served || (new && preferred))
                            switch decided {
                            case .standby:
                                XCTAssertFalse(ours, "\(facts) peer \(String(describing: peerServes)): a node to serve became the standby")
                            case .serve(let withoutPeer):
                                XCTAssertTrue(ours, "\(facts) peer \(String(describing: peerServes)): served beside the peer's server")
                                XCTAssertEqual(withoutPeer, peerServes == nil)
                                if peerServes == nil {
                                    XCTAssertTrue(served && alone, "\(facts): served without the peer with a copy that may be old")
                                }
                            case .waitForPeer:
                                XCTAssertTrue(ours && peerServes == nil && !(served && alone), "\(facts): waited needlessly")
                            }
                        }
                    }
                }
            }
        }
        XCTAssertEqual(ExportRole.start(copy(new: true, preferred: true), peerServes: nil),
                       .waitForPeer(why: "this node has no copy of the export yet, and the peer may hold one"))
    }

    func testAfterASelfFenceTheNodeServesOnlyWhenThePeerDoesNot() {
        XCTAssertEqual(ExportRole.rejoin(peerServes: true), .standby)
        XCTAssertEqual(ExportRole.rejoin(peerServes: nil), .standby, "served again without knowing the peer does not")
        XCTAssertEqual(ExportRole.rejoin(peerServes: false), .serve(alone: false))
    }

    func testAFenceEndsOnlyAServerOfTheAskedEpochOrOlder() {
        XCTAssertEqual(ExportRole.fence(serving: true, ownEpoch: 3, asked: 3, handOver: false), .end(handOver: false))
        XCTAssertEqual(ExportRole.fence(serving: true, ownEpoch: 2, asked: 3, handOver: true), .end(handOver: true))
        XCTAssertEqual(ExportRole.fence(serving: true, ownEpoch: 4, asked: 3, handOver: false), .refuseNewer(ownEpoch: 4))
        XCTAssertEqual(ExportRole.fence(serving: false, ownEpoch: 4, asked: 3, handOver: false), .refuseNewer(ownEpoch: 4),
                       "a stale swap's fence was answered as if nothing were wrong")
        XCTAssertEqual(ExportRole.fence(serving: false, ownEpoch: 3, asked: 3, handOver: false), .nothingRuns)
    }

    /// DESIGN.md §4.1 through a fence: writes a server answered alone are
    /// not on the peer, so the peer must not serve; a hand-over drained them.
    func testAServerThatAnsweredAloneIsServedAgainAfterAFence() {
        XCTAssertEqual(ExportRole.afterFence(handOver: false, answeredAlone: true), .serve(alone: true))
        XCTAssertEqual(ExportRole.afterFence(handOver: false, answeredAlone: false), .standby)
        XCTAssertEqual(ExportRole.afterFence(handOver: true, answeredAlone: true), .standby)
    }

    func testACrashLoopStopsAfterThreeRestartsInAMinute() {
        var restarts = ExportRole.Restarts()
        let start = Instant(nanoseconds: 5_000_000_000)
        func at(_ seconds: UInt64) -> Instant { start + .milliseconds(seconds * 1000) }
        XCTAssertTrue(restarts.exited(at: at(0)))
        XCTAssertTrue(restarts.exited(at: at(10)))
        XCTAssertTrue(restarts.exited(at: at(20)))
        XCTAssertFalse(restarts.exited(at: at(30)), "a fourth restart within a minute")
        XCTAssertFalse(restarts.exited(at: at(59)))
        XCTAssertTrue(restarts.exited(at: at(60)), "the first restart still counted after a minute")
        XCTAssertFalse(restarts.exited(at: at(61)), "refused exits counted as restarts, or old ones dropped early")
    }

    /// A server at the wait limit answers alone only on its agent's consent,
    /// which a peer that may have taken over without a fence never gets:
    /// every combination of the facts against the rule written out.
    func testAServerAnswersWithoutItsStandbyOnlyWhileNoOtherNodeMayServe() {
        let now = Instant(nanoseconds: 100_000_000_000)
        let limit = TimeSpan.milliseconds(5_000)
        func ago(_ milliseconds: UInt64) -> Instant { Instant(nanoseconds: now.nanoseconds - milliseconds * 1_000_000) }
        let ranLately = [now, ago(20), ago(2_000)]
        let resumedAt: [Instant?] = [nil, ago(1_000), ago(6_000)]
        for serving in [false, true] {
            for isolated in [false, true] {
                for gone in [false, true] {
                    for heard in [false, true] {
                        for lastRan in ranLately {
                            for resumed in resumedAt {
                                let peer = Swap.PeerReach(selfIsolated: isolated, foundGoneAt: gone ? ago(500) : nil,
                                                          heardOnSomePath: heard, lastHeard: ago(heard ? 0 : 3_000))
                                let runs = ExportRole.AgentRuns(lastRan: lastRan, resumedAt: resumed)
                                let answer = ExportRole.answerAlone(serving: serving, peer: peer, agent: runs, now: now, waitLimit: limit)
                                let running = now - lastRan <= PeerLiveness.runGapLimit && resumed.map { now - $0 >= limit } ?? true
                                let mayGoAlone = serving && !isolated && running
                                // A peer that is heard must stand its replica down first: it may be swapping.
                                let expected: ExportRole.AnswerAlone? = !mayGoAlone ? nil : gone ? .consent : heard ? .askPeer : nil
                                if let expected {
                                    XCTAssertEqual(answer, expected, "serving \(serving), \(peer), \(runs)")
                                } else if case .withhold = answer {} else {
                                    XCTFail("serving \(serving), \(peer), \(runs): \(answer)")
                                }
                            }
                        }
                    }
                }
            }
        }
        // The hole it closes (ClusterTests.testAStalledNodeIsTakenOverAndItsOldServerAcknowledgesNothing):
        // an agent that has just run again after a stop consents to nothing, though it counts its peer as heard.
        let woken = ExportRole.answerAlone(serving: true, peer: Swap.PeerReach(selfIsolated: false, foundGoneAt: nil, heardOnSomePath: true, lastHeard: now),
                                           agent: .init(lastRan: now, resumedAt: now), now: now, waitLimit: limit)
        guard case .withhold(let why) = woken else { return XCTFail("an agent just woken consented") }
        XCTAssertTrue(why.contains("did not run"), why)
    }

    /// The peer's side of `askPeer`: a node whose swap of the export runs, or
    /// that knows a newer epoch, never lets the old server go alone.
    func testAPeerStandsItsReplicaDownOnlyWhenNoSwapOfTheExportRunsThere() {
        XCTAssertEqual(ExportRole.outdate(swapUnderWay: false, ownEpoch: 4, asked: 4), .standDown)
        XCTAssertEqual(ExportRole.outdate(swapUnderWay: false, ownEpoch: 3, asked: 4), .standDown)
        guard case .refuse(let why) = ExportRole.outdate(swapUnderWay: true, ownEpoch: 4, asked: 4) else {
            return XCTFail("a node swapping the export let its old server go alone")
        }
        XCTAssertTrue(why.contains("swap"), why)
        guard case .refuse = ExportRole.outdate(swapUnderWay: false, ownEpoch: 5, asked: 4) else {
            return XCTFail("a node that knows a newer epoch let an old server go alone")
        }
    }
}
