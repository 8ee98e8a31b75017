// Goal: the monitor declares a stalled, dead or impostor server failed within
// the §8 timings, and never for anything else (a late answer, a slow answer
// within the deadline, its own stall).
// Method: drive the state machine with a hand-advanced clock, ticking every
// 10 ms; a scripted server answers the probes the test chooses, with the
// right MAC unless told otherwise. Keys are a counter, so runs repeat exactly.
@testable import BatonCore
import XCTest

private let secret = Array("export-secret".utf8)

private struct MonitorHarness {
    var monitor = Monitor(authenticator: .testing(secret))
    var now = Instant.zero
    var keyCounter: UInt8 = 0
    /// Probes sent, in order, with the instant each went out.
    var probes: [(key: [UInt8], sentAt: Instant)] = []
    /// Every action with the instant it came out.
    var log: [(Instant, Monitor.Action)] = []
    let epoch: UInt64 = 5

    init() { record(monitor.handle(.started(epoch: epoch), at: now)) }

    mutating func record(_ actions: [Monitor.Action]) {
        for action in actions {
            log.append((now, action))
            if case .sendProbe(let key) = action { probes.append((key, now)) }
        }
    }

    mutating func tick() {
        keyCounter &+= 1
        record(monitor.handle(.tick(freshKey: [UInt8](repeating: keyCounter, count: ChallengeMAC.keyBytes)), at: now))
    }

    /// Ticks every 10 ms up to `milliseconds`, with heartbeats every 100 ms unless `heartbeats` is false.
    mutating func advance(to milliseconds: UInt64, heartbeats: Bool = true) {
        while now < .milliseconds(milliseconds) {
            now = now + .milliseconds(10)
            if heartbeats, now.nanoseconds % 100_000_000 == 0 { heartbeat() }
            tick()
        }
    }

    mutating func heartbeat(epoch: UInt64? = nil) {
        record(monitor.handle(.heartbeatReceived(epoch: epoch ?? self.epoch, journalSequence: 1), at: now))
    }

    mutating func answer(probe index: Int, epoch: UInt64? = nil, wrong: Bool = false) {
        let key = probes[index].key
        let claimed = epoch ?? self.epoch
        var response = ChallengeMAC.response(.testing(secret), key: key, epoch: claimed, journalSequence: 9)
        if wrong { response[0] ^= 1 }
        record(monitor.handle(.probeAnswered(key: key, epoch: claimed, journalSequence: 9, response: response), at: now))
    }

    var declarations: [(Instant, Monitor.FailureReason)] {
        log.compactMap { if case .declareFailed(let reason) = $0.1 { ($0.0, reason) } else { nil } }
    }

    var roundTrips: [TimeSpan] { log.compactMap { if case .reportRoundTrip(let rtt) = $0.1 { rtt } else { nil } } }
}

final class FailoverMonitorTests: XCTestCase {
    // §8: "probe interval 100 ms, probe deadline 200 ms, probe misses 3; server heartbeat every 100 ms, grace 500 ms"
    func testDefaultsAreTheDesignTimings() {
        let t = MonitorTimings.defaults
        XCTAssertEqual(t.probeInterval, .milliseconds(100))
        XCTAssertEqual(t.probeDeadline, .milliseconds(200))
        XCTAssertEqual(t.probeMisses, 3)
        XCTAssertEqual(t.heartbeatGrace, .milliseconds(500))
    }

    func testTimingsOutOfRangeAreRefused() {
        XCTAssertThrowsError(try MonitorTimings(probeInterval: .milliseconds(100), probeDeadline: .milliseconds(200),
                                                probeMisses: 0, heartbeatGrace: .milliseconds(500),
                                                tickGapLimit: .milliseconds(250)))
        XCTAssertThrowsError(try MonitorTimings(probeInterval: .milliseconds(100), probeDeadline: .milliseconds(200),
                                                probeMisses: 3, heartbeatGrace: .milliseconds(500),
                                                tickGapLimit: .milliseconds(100)))
        XCTAssertThrowsError(try MonitorTimings(probeInterval: .milliseconds(1), probeDeadline: .milliseconds(200),
                                                probeMisses: 3, heartbeatGrace: .milliseconds(500),
                                                tickGapLimit: .milliseconds(250)))
    }

    // §2: "Checks the server periodically ... it sends a fresh random key"
    func testProbeGoesOutAtStartThenEveryIntervalWithAFreshKey() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 350)
        XCTAssertEqual(h.probes.map(\.sentAt), [.zero, .milliseconds(100), .milliseconds(200), .milliseconds(300)])
        XCTAssertEqual(Set(h.probes.map(\.key)).count, h.probes.count)
    }

    // §5.1: "M misses `probe_misses` challenges in a row ... → declares S failed."
    func testThreeMissesInARowDeclareTheServerFailed() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 400)
        XCTAssertTrue(h.declarations.isEmpty, "two misses are not three")
        h.advance(to: 410)
        XCTAssertEqual(h.declarations.map(\.0), [.milliseconds(410)])
        XCTAssertEqual(h.declarations.first?.1, .probesMissed(count: 3))
        // §8 "Goal: from stall to client IO flowing again in under 1 s": detection leaves most of it.
        XCTAssertLessThan(h.declarations[0].0, .milliseconds(500))
        h.advance(to: 1000)
        XCTAssertEqual(h.declarations.count, 1, "declared once; the swap owns the export now")
        XCTAssertEqual(h.probes.count, 5, "no probes after the declaration")
    }

    func testAnAnswerInBetweenBreaksTheRun() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 250)   // probe 0 missed (one miss)
        h.answer(probe: 2)   // probe 2 (sent at 200) answered in time: the run is broken
        h.advance(to: 700)   // probe 1 expires, older than the answer; probes 3 and 4 missed
        XCTAssertTrue(h.declarations.isEmpty)
        h.advance(to: 710)   // probe 5 (sent at 500) missed: three in a row after the answer
        XCTAssertEqual(h.declarations.first?.1, .probesMissed(count: 3))
    }

    func testMissOfAProbeOlderThanAnAnsweredOneIsNotCounted() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 150)
        h.answer(probe: 1)   // sent at 100; probe 0 (sent at 0) is still out
        h.advance(to: 510)   // probe 0 expires at 210 after the answer, then 2 (410) and 3 (510)
        XCTAssertTrue(h.declarations.isEmpty, "probe 0 was overtaken by an answer and must not count")
        h.advance(to: 610)
        XCTAssertEqual(h.declarations.first?.1, .probesMissed(count: 3))
    }

    // Brief: "A wrong response counts as a miss."
    func testWrongResponsesCountAsMissesAndSayWhy() {
        var h = MonitorHarness()
        h.tick()
        h.answer(probe: 0, wrong: true)
        h.advance(to: 100)
        h.answer(probe: 1, wrong: true)
        XCTAssertTrue(h.declarations.isEmpty)
        h.advance(to: 200)
        h.answer(probe: 2, wrong: true)
        XCTAssertEqual(h.declarations.map(\.0), [.milliseconds(200)], "a wrong answer is a miss at once, not at the deadline")
        XCTAssertEqual(h.declarations.first?.1, .wrongResponses(count: 3, wrong: 3))
        XCTAssertTrue(h.roundTrips.isEmpty)
    }

    // §2: "expects the predefined response ... within a deadline"; brief: "Late answers to an old probe don't count."
    func testLateAnswerDoesNotCount() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 250)
        h.answer(probe: 0)   // 250 ms after it went out: already a miss
        XCTAssertTrue(h.roundTrips.isEmpty)
        h.advance(to: 410)
        XCTAssertEqual(h.declarations.first?.1, .probesMissed(count: 3))
    }

    func testAnswerWithinTheDeadlineReportsItsRoundTripOnce() {
        var h = MonitorHarness()
        h.tick()
        h.advance(to: 190)
        h.answer(probe: 0)
        h.answer(probe: 0)   // a duplicate is not a second answer
        XCTAssertEqual(h.roundTrips, [.milliseconds(190)])
    }

    // §2: "the server sends heartbeats at a fixed rate; a gap beyond the limit counts."
    func testHeartbeatGapDeclaresEvenWhenProbesAreAnswered() {
        var h = MonitorHarness()
        h.tick()
        var answered = 0
        while h.now < .milliseconds(600), h.declarations.isEmpty {
            h.advance(to: h.now.nanoseconds / 1_000_000 + 10, heartbeats: false)
            while answered < h.probes.count { h.answer(probe: answered); answered += 1 }
        }
        XCTAssertEqual(h.declarations.map(\.0), [.milliseconds(510)])
        XCTAssertEqual(h.declarations.first?.1, .heartbeatGap(silence: .milliseconds(510)))
    }

    func testHeartbeatsOfAnotherEpochAreNotLife() {
        var h = MonitorHarness()
        h.tick()
        var answered = 0
        while h.now < .milliseconds(600), h.declarations.isEmpty {
            h.advance(to: h.now.nanoseconds / 1_000_000 + 10, heartbeats: false)
            h.heartbeat(epoch: 4)
            while answered < h.probes.count { h.answer(probe: answered); answered += 1 }
        }
        guard case .heartbeatGap = h.declarations.first?.1 else { return XCTFail("\(h.declarations)") }
    }

    // §4.2: "a fenced server that wakes up can acknowledge nothing" — and it must not pass for the server either.
    func testCorrectlyKeyedAnswerOfAnOlderEpochDeclares() {
        var h = MonitorHarness()
        h.tick()
        h.answer(probe: 0, epoch: 4)
        XCTAssertEqual(h.declarations.first?.1, .olderEpochSeen(4))
    }

    func testCorrectlyKeyedAnswerOfANewerEpochStandsDown() {
        var h = MonitorHarness()
        h.tick()
        h.answer(probe: 0, epoch: 6)
        XCTAssertEqual(h.log.last?.1, .standDown(newerEpoch: 6))
        h.advance(to: 1000, heartbeats: false)
        XCTAssertTrue(h.declarations.isEmpty, "a stale monitor fences no one")
    }

    func testTheMonitorsOwnStallIsNotTheServersFailure() {
        var h = MonitorHarness()
        h.tick()
        h.now = .milliseconds(2000)   // the monitor was not scheduled for two seconds
        h.tick()
        XCTAssertTrue(h.declarations.isEmpty)
        XCTAssertEqual(h.probes.last?.sentAt, .milliseconds(2000), "it probes again at once")
        h.advance(to: 2410)
        XCTAssertEqual(h.declarations.map(\.0), [.milliseconds(2410)], "and then judges as usual")
    }

    func testStoppedMonitorIgnoresLateTrafficAndCanStartAgain() {
        var h = MonitorHarness()
        h.tick()
        h.record(h.monitor.handle(.stopped, at: h.now))
        h.answer(probe: 0)
        h.advance(to: 1000, heartbeats: false)
        XCTAssertTrue(h.roundTrips.isEmpty, "the answer came after the stop")
        XCTAssertTrue(h.declarations.isEmpty)
        XCTAssertEqual(h.probes.count, 1)
        h.record(h.monitor.handle(.started(epoch: 6), at: h.now))
        h.tick()
        XCTAssertEqual(h.probes.count, 2)
    }
}
