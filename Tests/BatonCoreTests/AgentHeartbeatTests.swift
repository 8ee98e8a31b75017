// Goal: what agents send each other is accepted only from a holder of the
// shared secret and unaltered; the silence of a path starts the diagnostic
// ladder once per silence, after the grace, with the instant the peer was
// last heard on any path (DESIGN.md §6, §8).
// Method: the pure codec on round trips, a wrong secret, flipped bits and
// cut datagrams; `PeerLiveness` with a hand-advanced clock.
@testable import BatonCore
import XCTest

final class AgentHeartbeatTests: XCTestCase {
    private let secret = Array("thirty-two bytes of shared secret!".utf8)

    func testDatagramsRoundTrip() throws {
        let datagrams: [AgentDatagram] = [
            .heartbeat(node: "a", incarnation: 7, sequence: 1 << 40), .probe(node: "node-b", nonce: .max),
            .probeAnswer(node: "b", nonce: 0),
        ]
        for datagram in datagrams {
            XCTAssertEqual(try AgentDatagram.decode(datagram.encode(.testing(secret)), .testing(secret)), datagram)
        }
    }

    func testAnotherSecretOrAnyChangedBitIsRefused() {
        let bytes = AgentDatagram.heartbeat(node: "a", incarnation: 7, sequence: 9).encode(.testing(secret))
        XCTAssertThrowsError(try AgentDatagram.decode(bytes, .testing(Array("another secret, also long enough..".utf8)))) {
            XCTAssertEqual($0 as? AgentDatagram.Refusal, .unauthenticated)
        }
        for index in bytes.indices {
            var changed = bytes
            changed[index] ^= 0x10
            XCTAssertThrowsError(try AgentDatagram.decode(changed, .testing(secret)), "bit flipped at byte \(index) accepted")
        }
    }

    func testCutOrOversizedDatagramsAreRefused() {
        let bytes = AgentDatagram.probe(node: "a", nonce: 3).encode(.testing(secret))
        for count in 0..<bytes.count {
            XCTAssertThrowsError(try AgentDatagram.decode(Array(bytes.prefix(count)), .testing(secret)))
        }
        XCTAssertThrowsError(try AgentDatagram.decode([UInt8](repeating: 1, count: AgentDatagram.maxBytes + 1), .testing(secret)))
        // A valid code over a body that does not decode (a future version) is malformed, not a crash.
        let body: [UInt8] = [99, 0, 0, 0, 0]
        let unknown = body + MessageAuthenticator.testing(secret).code(body)
        XCTAssertThrowsError(try AgentDatagram.decode(unknown, .testing(secret))) {
            guard case .malformed = $0 as? AgentDatagram.Refusal else { return XCTFail("\($0)") }
        }
    }

    private func at(_ milliseconds: UInt64) -> Instant { Instant(nanoseconds: 1_000_000_000 + milliseconds * 1_000_000) }

    func testASilentPeerIsDiagnosedOnceAfterTheGraceFromWhenItWasLastHeard() {
        var liveness = PeerLiveness(grace: .milliseconds(1000), startedAt: at(0))
        XCTAssertTrue(liveness.heard(.first, incarnation: 1, sequence: 1, at: at(200)))
        XCTAssertTrue(liveness.heard(.second, incarnation: 1, sequence: 1, at: at(210)))
        XCTAssertNil(liveness.silenceToDiagnose(at: at(1200)), "diagnosed within the grace")
        XCTAssertEqual(liveness.silentPaths(at: at(1205)), [.first])
        XCTAssertEqual(liveness.silenceToDiagnose(at: at(1205)), at(210), "path 1 silent past the grace")
        XCTAssertNil(liveness.silenceToDiagnose(at: at(1208)), "the same silence diagnosed twice")
        // Path 2 goes silent too: a new silence, diagnosed from the last time anything was heard.
        XCTAssertEqual(liveness.silenceToDiagnose(at: at(1215)), at(210))
        XCTAssertNil(liveness.silenceToDiagnose(at: at(5000)))
        // Heard again, then silent again: diagnosed again.
        XCTAssertTrue(liveness.heard(.first, incarnation: 1, sequence: 30, at: at(6000)))
        XCTAssertTrue(liveness.heard(.second, incarnation: 1, sequence: 30, at: at(6000)))
        XCTAssertNil(liveness.silenceToDiagnose(at: at(6500)))
        XCTAssertEqual(liveness.silenceToDiagnose(at: at(7001)), at(6000))
    }

    // The simulation's seed 1780: an agent frozen for 6 s must not count its own freeze as its peer's silence.
    func testAGapInTheAgentsOwnRunsCountsAsHearingThePeer() {
        var liveness = PeerLiveness(grace: .milliseconds(1000), startedAt: at(0))
        XCTAssertTrue(liveness.heard(.first, incarnation: 1, sequence: 1, at: at(200)))
        XCTAssertTrue(liveness.heard(.second, incarnation: 1, sequence: 1, at: at(200)))
        XCTAssertFalse(liveness.ran(at: at(700), lastRan: at(680)), "an ordinary tick")
        XCTAssertTrue(liveness.ran(at: at(6_200), lastRan: at(680)), "6 s without running")
        XCTAssertEqual(liveness.lastHeardOnAnyPath, at(6_200))
        XCTAssertEqual(liveness.silentPaths(at: at(7_000)), [], "silent only one grace after the agent runs again")
        XCTAssertEqual(liveness.silenceToDiagnose(at: at(7_201)), at(6_200))
    }

    func testAPeerNeverHeardIsDiagnosedOneGraceAfterTheStart() {
        var liveness = PeerLiveness(grace: .milliseconds(1000), startedAt: at(0))
        XCTAssertNil(liveness.silenceToDiagnose(at: at(1000)))
        XCTAssertEqual(liveness.silenceToDiagnose(at: at(1001)), at(0))
    }

    func testReplayedHeartbeatsDoNotCountAndARestartedPeerDoes() {
        var liveness = PeerLiveness(grace: .milliseconds(1000), startedAt: at(0))
        XCTAssertTrue(liveness.heard(.first, incarnation: 1, sequence: 5, at: at(100)))
        XCTAssertFalse(liveness.heard(.first, incarnation: 1, sequence: 5, at: at(1500)), "a replay counted")
        XCTAssertFalse(liveness.heard(.first, incarnation: 1, sequence: 4, at: at(1500)), "an old heartbeat counted")
        XCTAssertEqual(liveness.lastHeard.first, at(100))
        // The same sequence on the other path is that path's own heartbeat.
        XCTAssertTrue(liveness.heard(.second, incarnation: 1, sequence: 5, at: at(110)))
        // The peer's agent restarted: its sequence starts again.
        XCTAssertTrue(liveness.heard(.first, incarnation: 2, sequence: 1, at: at(1600)))
        XCTAssertEqual(liveness.lastHeard.first, at(1600))
        // A recording of the earlier run, replayed: it does not count, whatever its sequence.
        XCTAssertFalse(liveness.heard(.first, incarnation: 1, sequence: 6, at: at(1700)), "an earlier run's heartbeat counted")
        XCTAssertFalse(liveness.heard(.second, incarnation: 1, sequence: 1_000, at: at(1700)), "an earlier run's heartbeat counted")
        XCTAssertEqual(liveness.lastHeard.first, at(1600))
        XCTAssertTrue(liveness.heard(.first, incarnation: 2, sequence: 2, at: at(1800)))
    }

    func testAnIncarnationIsAboveTheLastOneWhateverTheClock() {
        XCTAssertEqual(AgentIncarnation.next(after: nil, clockNanoseconds: 1_000), 1_000)
        XCTAssertEqual(AgentIncarnation.next(after: 500, clockNanoseconds: 1_000), 1_000)
        // The clock was set back between two runs: still above the last.
        XCTAssertEqual(AgentIncarnation.next(after: 5_000, clockNanoseconds: 1_000), 5_001)
        XCTAssertEqual(AgentIncarnation.next(after: .max, clockNanoseconds: 1_000), .max)
    }
}
