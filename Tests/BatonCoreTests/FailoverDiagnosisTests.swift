// Goal: the diagnostic ladder gives the verdict of each row of the table in
// DESIGN.md §6, climbs the rungs in the design's order and no further than
// needed, and applies the delays so that an isolated node has fenced itself
// before its peer takes over.
// Method: the pure ladder function on complete findings, one test per row;
// the state machine driven by a scripted network (each target reached or
// not) with a hand-advanced clock; an exhaustive check over every combination
// of findings that the machine and the pure function agree.
@testable import BatonCore
import XCTest

/// Complete findings from a compact description.
private func findings(agent: (Reach, Reach), os: Reach, nic: (Reach, Reach), switches: (Reach, Reach)) -> DiagnosisFindings {
    var f = DiagnosisFindings()
    f.peerAgent = PerPath(agent.0, agent.1)
    f.peerOperatingSystem = os
    f.peerNIC = PerPath(nic.0, nic.1)
    f.networkSwitch = PerPath(switches.0, switches.1)
    return f
}

/// Runs the machine against a network where `truth` says what answers; answers come 5 ms after each probe,
/// unanswered probes wait for the round deadline. Returns the actions with their instants.
private func drive(_ truth: DiagnosisFindings, lastHeard: Instant, start: Instant, until end: Instant,
                   timings: DiagnosisTimings = .defaults) -> (log: [(Instant, Diagnosis.Action)], rounds: [[DiagnosisTarget]]) {
    var diagnosis = Diagnosis(timings: timings)
    var now = start
    var log: [(Instant, Diagnosis.Action)] = []
    var rounds: [[DiagnosisTarget]] = []
    var pending: [DiagnosisTarget] = []
    func record(_ actions: [Diagnosis.Action]) {
        let probes = actions.compactMap { if case .probe(let target) = $0 { target } else { nil } }
        if !probes.isEmpty { rounds.append(probes) }
        pending += probes
        log += actions.map { (now, $0) }
    }
    record(diagnosis.handle(.heartbeatsLost(lastHeard: lastHeard), at: now))
    while now < end {
        now = now + .milliseconds(5)
        let answering = pending.filter { truth[$0] == .reached }
        pending.removeAll()
        for target in answering { record(diagnosis.handle(.probeAnswered(target), at: now)) }
        record(diagnosis.handle(.tick, at: now))
    }
    return (log, rounds)
}

private func verdicts(_ log: [(Instant, Diagnosis.Action)]) -> [DiagnosisVerdict] {
    log.compactMap { if case .decided(let verdict) = $0.1 { verdict } else { nil } }
}

private func instant(of wanted: Diagnosis.Action, in log: [(Instant, Diagnosis.Action)]) -> Instant? {
    log.first { $0.1 == wanted }?.0
}

final class FailoverDiagnosisTests: XCTestCase {
    // MARK: the rows of the table

    // "peer agent down, peer OS up | ... take over the peer's exports after fencing them through the OS-level path"
    func testRowPeerAgentDownPeerOSUp() {
        let f = findings(agent: (.unreached, .unreached), os: .reached, nic: (.reached, .reached), switches: (.reached, .reached))
        XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.peerAgentDown))
    }

    // "a peer NIC down | move heartbeats, replication and client traffic to the redundant NIC; no failover"
    func testRowPeerNICDown() {
        for path in NetworkPath.allCases {
            var f = findings(agent: (.reached, .reached), os: .reached, nic: (.reached, .reached), switches: (.reached, .reached))
            f.peerAgent[path] = .unreached
            f.peerNIC[path] = .unreached
            XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.peerNICDown(path)))
        }
    }

    // "a switch down | use the redundant switch; no failover"
    func testRowSwitchDown() {
        for path in NetworkPath.allCases {
            var f = findings(agent: (.reached, .reached), os: .reached, nic: (.reached, .reached), switches: (.reached, .reached))
            f.peerAgent[path] = .unreached
            f.peerNIC[path] = .unreached
            f.networkSwitch[path] = .unreached
            XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.switchDown(path)))
        }
    }

    // "the peer unreachable on every path, a switch reachable | the peer is dead or isolated: take over after `takeover_delay`"
    func testRowPeerDeadOrIsolated() {
        for switches in [(Reach.reached, Reach.reached), (.reached, .unreached), (.unreached, .reached)] {
            let f = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: switches)
            XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.peerDeadOrIsolated), "\(switches)")
        }
    }

    // "this node reaches no switch at all | *this* node is the isolated one: self-fence"
    func testRowSelfIsolated() {
        let f = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.unreached, .unreached))
        XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.selfIsolated))
    }

    func testAgentAnsweringOnEveryPathIsHealthy() {
        let f = findings(agent: (.reached, .reached), os: .unknown, nic: (.unknown, .unknown), switches: (.unknown, .unknown))
        XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.allHealthy))
    }

    func testPathWhoseNICAndSwitchAnswerButAgentDoesNotIsAPathFault() {
        let f = findings(agent: (.reached, .unreached), os: .unknown, nic: (.unknown, .reached), switches: (.unknown, .unknown))
        XCTAssertEqual(DiagnosisLadder.step(f), .verdict(.pathDown(.second)))
    }

    // MARK: the order of the rungs

    // §6: "1. access the peer's agent ... over each path; 2. ... the peer's operating system ...;
    // 3. ... the peer's first NIC address; if that fails, try the second NIC; 4. ... the first switch ...; if that fails, the second switch."
    func testIsolatedNodeClimbsEveryRungInTheDesignsOrder() {
        let truth = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.unreached, .unreached))
        let run = drive(truth, lastHeard: .zero, start: .milliseconds(1000), until: .milliseconds(2000))
        XCTAssertEqual(run.rounds, [
            [.peerAgent(.first), .peerAgent(.second)], [.peerOperatingSystem], [.peerNIC(.first)], [.peerNIC(.second)],
            [.networkSwitch(.first)], [.networkSwitch(.second)],
        ])
        XCTAssertEqual(run.rounds.count, DiagnosisLadder.maxRounds)
        XCTAssertEqual(verdicts(run.log), [.selfIsolated])
    }

    func testLadderStopsAtTheFirstRungThatDecides() {
        let truth = findings(agent: (.unreached, .unreached), os: .reached, nic: (.reached, .reached), switches: (.reached, .reached))
        let run = drive(truth, lastHeard: .zero, start: .milliseconds(1000), until: .milliseconds(2000))
        XCTAssertEqual(run.rounds, [[.peerAgent(.first), .peerAgent(.second)], [.peerOperatingSystem]])
        XCTAssertEqual(verdicts(run.log), [.peerAgentDown])
    }

    func testOneWorkingPathProbesOnlyTheFailedPath() {
        let truth = findings(agent: (.unreached, .reached), os: .reached, nic: (.unreached, .reached), switches: (.reached, .reached))
        let run = drive(truth, lastHeard: .zero, start: .milliseconds(1000), until: .milliseconds(2000))
        XCTAssertEqual(run.rounds, [[.peerAgent(.first), .peerAgent(.second)], [.peerNIC(.first)], [.networkSwitch(.first)]])
        XCTAssertEqual(verdicts(run.log), [.peerNICDown(.first)])
    }

    func testMachineAgreesWithTheLadderOnEveryCombination() {
        let values: [Reach] = [.reached, .unreached]
        var combinations = 0
        for a1 in values { for a2 in values { for os in values { for n1 in values { for n2 in values {
            for s1 in values { for s2 in values {
                let truth = findings(agent: (a1, a2), os: os, nic: (n1, n2), switches: (s1, s2))
                guard case .verdict(let expected) = DiagnosisLadder.step(truth) else { return XCTFail("incomplete \(truth)") }
                let run = drive(truth, lastHeard: .zero, start: .milliseconds(1000), until: .milliseconds(4000))
                XCTAssertEqual(verdicts(run.log), [expected], "\(truth)")
                XCTAssertLessThanOrEqual(run.rounds.count, DiagnosisLadder.maxRounds)
                combinations += 1
            }}
        }}}}}
        XCTAssertEqual(combinations, 128)
    }

    func testADefiniteProbeFailureDoesNotWaitForTheDeadline() {
        var diagnosis = Diagnosis()
        _ = diagnosis.handle(.heartbeatsLost(lastHeard: .zero), at: .milliseconds(1000))
        _ = diagnosis.handle(.probeAnswered(.peerAgent(.first)), at: .milliseconds(1001))
        let actions = diagnosis.handle(.probeFailed(.peerAgent(.second)), at: .milliseconds(1002))
        XCTAssertEqual(actions, [.probe(.peerNIC(.second))])
    }

    func testAnswerAfterTheRoundTimedOutDoesNotChangeTheFinding() {
        var diagnosis = Diagnosis()
        _ = diagnosis.handle(.heartbeatsLost(lastHeard: .zero), at: .milliseconds(1000))
        XCTAssertEqual(diagnosis.handle(.tick, at: .milliseconds(1100)), [.probe(.peerOperatingSystem)])
        XCTAssertEqual(diagnosis.handle(.probeAnswered(.peerAgent(.first)), at: .milliseconds(1101)), [])
        XCTAssertEqual(diagnosis.findings.peerAgent.first, .unknown, "findings are published with the verdict")
        XCTAssertEqual(diagnosis.handle(.probeAnswered(.peerOperatingSystem), at: .milliseconds(1102)), [.decided(.peerAgentDown)])
        XCTAssertEqual(diagnosis.findings.peerAgent.first, .unreached)
    }

    // MARK: the delays

    // "the peer is dead or isolated: take over after `takeover_delay`"
    func testTakeoverWaitsForTheDelayCountedFromLastHeard() {
        let truth = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.reached, .reached))
        let run = drive(truth, lastHeard: .zero, start: .milliseconds(1000), until: .milliseconds(3000))
        let announced = run.log.first { if case .awaitingTakeover = $0.1 { true } else { false } }
        XCTAssertEqual(announced?.1, .awaitingTakeover(at: .milliseconds(2500)))
        XCTAssertEqual(instant(of: .decided(.peerDeadOrIsolated), in: run.log), .milliseconds(2500))
    }

    func testPeerHeardDuringTheDelayCancelsTheTakeover() {
        var diagnosis = Diagnosis()
        var now = Instant.milliseconds(1000)
        var actions = diagnosis.handle(.heartbeatsLost(lastHeard: .zero), at: now)
        while !actions.contains(where: { if case .awaitingTakeover = $0 { true } else { false } }) {
            now = now + .milliseconds(10)
            actions = diagnosis.handle(.tick, at: now)
            if actions.contains(.probe(.networkSwitch(.first))) {
                actions = diagnosis.handle(.probeAnswered(.networkSwitch(.first)), at: now)
            }
        }
        XCTAssertEqual(diagnosis.handle(.peerHeard, at: .milliseconds(2000)), [.decided(.allHealthy)])
        XCTAssertEqual(diagnosis.handle(.tick, at: .milliseconds(3000)), [], "no takeover after the peer came back")
    }

    // "self-fence (stop its servers) within `selffence_delay` < `takeover_delay`"
    func testIsolatedNodeSelfFencesWithinTheDelayEvenWhenEveryProbeTimesOut() {
        let t = DiagnosisTimings.defaults
        let truth = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.unreached, .unreached))
        // The ladder starts when the grace runs out: the latest it can start.
        let run = drive(truth, lastHeard: .zero, start: .zero + t.agentHeartbeatGrace, until: .milliseconds(5000))
        let fencedAt = try! XCTUnwrap(instant(of: .selfFence, in: run.log))
        XCTAssertLessThanOrEqual(fencedAt, .zero + t.selffenceDelay)
    }

    // "The last two rows together keep a two-node cluster from split brain without a third machine."
    func testIsolatedNodeFencesBeforeItsPeerTakesOver() {
        let t = DiagnosisTimings.defaults
        // The cut falls just after A heard B and just before B would have heard A: they last heard each other
        // one heartbeat interval apart, the worst case.
        let aLastHeard = Instant.milliseconds(10_000)
        let bLastHeard = aLastHeard - t.agentHeartbeatInterval
        let isolatedA = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.unreached, .unreached))
        let survivingB = findings(agent: (.unreached, .unreached), os: .unreached, nic: (.unreached, .unreached), switches: (.reached, .reached))
        let a = drive(isolatedA, lastHeard: aLastHeard, start: aLastHeard + t.agentHeartbeatGrace, until: .milliseconds(15_000))
        let b = drive(survivingB, lastHeard: bLastHeard, start: bLastHeard + t.agentHeartbeatGrace, until: .milliseconds(15_000))
        let fencedAt = try! XCTUnwrap(instant(of: .selfFence, in: a.log))
        let takeoverAt = try! XCTUnwrap(instant(of: .decided(.peerDeadOrIsolated), in: b.log))
        XCTAssertLessThan(fencedAt, takeoverAt)
    }

    // Brief: "test ... that selffenceDelay < takeoverDelay is asserted"
    func testTimingsRefuseASelffenceDelayNotBelowTheTakeoverDelay() {
        XCTAssertLessThan(DiagnosisTimings.defaults.selffenceDelay, DiagnosisTimings.defaults.takeoverDelay)
        for takeover in [1800, 1500] as [UInt64] {
            XCTAssertThrowsError(try DiagnosisTimings(
                roundDeadline: .milliseconds(100), agentHeartbeatInterval: .milliseconds(200),
                agentHeartbeatGrace: .milliseconds(1000), selffenceDelay: .milliseconds(1800),
                takeoverDelay: .milliseconds(takeover))) { error in
                XCTAssertEqual(error as? DiagnosisTimings.Invalid, .selffenceNotBeforeTakeover)
            }
        }
    }

    func testTimingsRefuseALadderThatCannotFinishBeforeTheSelffence() {
        XCTAssertThrowsError(try DiagnosisTimings(
            roundDeadline: .milliseconds(200), agentHeartbeatInterval: .milliseconds(200),
            agentHeartbeatGrace: .milliseconds(1000), selffenceDelay: .milliseconds(1800),
            takeoverDelay: .milliseconds(2500))) { error in
            XCTAssertEqual(error as? DiagnosisTimings.Invalid, .ladderLongerThanSelffenceDelay)
        }
    }

    func testTimingsRefuseDelaysCloserThanOneHeartbeatInterval() {
        XCTAssertThrowsError(try DiagnosisTimings(
            roundDeadline: .milliseconds(100), agentHeartbeatInterval: .milliseconds(200),
            agentHeartbeatGrace: .milliseconds(1000), selffenceDelay: .milliseconds(1800),
            takeoverDelay: .milliseconds(1900))) { error in
            XCTAssertEqual(error as? DiagnosisTimings.Invalid, .delaysCloserThanHeartbeatInterval)
        }
    }
}

extension Instant {
    fileprivate static func - (a: Instant, b: TimeSpan) -> Instant { Instant(nanoseconds: a.nanoseconds - b.nanoseconds) }
}
