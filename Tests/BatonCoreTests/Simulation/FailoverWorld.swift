@testable import BatonCore

/// A journal record as the simulation tracks it: position and the epoch that wrote it.
struct SimRecord: Hashable {
    var sequence: UInt64
    var epoch: UInt64
}

/// What crosses the simulated network.
enum SimMessage: Hashable {
    // To a node: its replica, its monitor, its agent.
    case record(SimRecord, server: Int)
    case heartbeat(epoch: UInt64, journalSequence: UInt64)
    case probeAnswer(key: [UInt8], epoch: UInt64, journalSequence: UInt64, response: [UInt8])
    case fence(epoch: UInt64)
    case fenceDone
    case catchUp(journal: [SimRecord], epoch: UInt64)
    case caughtUp
    case monitorRequest(epoch: UInt64)
    case monitorStarted
    // To a node's export server.
    case recordAck(sequence: UInt64, server: Int)
    case recordRefused(server: Int)
    case probe(key: [UInt8])
}

struct Envelope {
    var deliverAt: Instant
    var order: Int
    var to: Int
    var toServer: Bool
    var message: SimMessage
}

/// An export server process: applies client mutations, replicates them in
/// `sync` mode (acknowledged only once the standby has them), answers
/// probes, sends heartbeats. A stalled one (SIGSTOP) does nothing; its
/// messages wait in the socket buffer.
struct SimServer {
    static let maxUnacknowledged = 64
    let id: Int
    let epoch: UInt64
    var stalledUntil = Instant.zero
    var inbox: [SimMessage] = []
    var nextHeartbeatAt: Instant
    /// Sequence → when it was last sent to the standby.
    var unacknowledged: [UInt64: Instant] = [:]
}

/// One storage node: its agent's durable epoch, its copy of the journal, and the roles it plays.
struct SimNode {
    var persistedEpoch: UInt64 = 1
    var journal: [SimRecord] = []
    var server: SimServer?
    var monitor: Monitor?
    var swap: Swap?
    var diagnosis = Diagnosis()
    /// Holds the standby replica and should run a monitor.
    var isStandby: Bool
    var isolatedUntil = Instant.zero
    var lastHeardPeer = Instant.zero
    var peerWasReachable = true
    var nextDiagnosisAt = Instant.zero
    var monitorRestartAt = Instant.zero
}

struct SimulationStats: Equatable {
    var acknowledged = 0
    var declarations = 0
    var swapsCompleted = 0
    var swapsFailed = 0
    var refusedStaleRecords = 0
    var selfFences = 0
    var stalls = 0
    var crashes = 0
    var isolations = 0

    static func += (a: inout SimulationStats, b: SimulationStats) {
        a.acknowledged += b.acknowledged
        a.declarations += b.declarations
        a.swapsCompleted += b.swapsCompleted
        a.swapsFailed += b.swapsFailed
        a.refusedStaleRecords += b.refusedStaleRecords
        a.selfFences += b.selfFences
        a.stalls += b.stalls
        a.crashes += b.crashes
        a.isolations += b.isolations
    }
}

/// Two nodes running one export with the real Monitor, Swap and Diagnosis
/// state machines, over a seeded network that delays and loses messages,
/// with server stalls, server crashes and node isolations. Everything random
/// comes from the seed, so a run replays exactly (TigerBeetle's VOPR).
///
/// After every step it checks DESIGN.md §4.1 and §4.2: one server per epoch,
/// epochs only grow, and every acknowledged record is in the journal of each
/// server started after it was acknowledged.
struct FailoverWorld {
    static let step = TimeSpan.milliseconds(5)
    static let secret = Array("simulated-export-secret".utf8)
    static let traceLimit = 400

    let seed: UInt64
    private(set) var now = Instant.zero
    private(set) var nodes: [SimNode]
    private(set) var stats = SimulationStats()
    /// The first broken invariant, with the time it broke.
    private(set) var violation: String?
    /// The last events, for the report of a failing seed.
    private(set) var trace: [String] = []

    private var random: SplitMix64
    private var inFlight: [Envelope] = []
    private var nextOrder = 0
    private var nextServerID = 1
    private var pendingProbes: [(at: Instant, node: Int, target: DiagnosisTarget)] = []
    private let lossPerMille: UInt64
    private let maxDelayMilliseconds: UInt64

    // History for the invariants.
    /// Epoch → the node whose server acknowledged in it. A node, not a process: the swap restarts a
    /// crashed new server in place at the same epoch, once its exit is certain.
    private var acknowledgingNode: [UInt64: Int] = [:]
    private var acknowledged: [SimRecord] = []
    private var startedEpochs: [UInt64: Int] = [:]

    init(seed: UInt64) {
        self.seed = seed
        random = SplitMix64(seed: seed)
        lossPerMille = random.next() % 60
        maxDelayMilliseconds = 2 + random.next() % 30
        nodes = [SimNode(isStandby: false), SimNode(isStandby: true)]
        note("loss \(lossPerMille)‰, delay up to \(maxDelayMilliseconds) ms")
        startServer(on: 0, epoch: 1)
        startMonitor(on: 1, epoch: 1)
    }

    mutating func run(for duration: TimeSpan) {
        let end = now + duration
        while now < end, violation == nil { step() }
    }

    mutating func step() {
        now = now + Self.step
        injectFaults()
        deliver()
        answerDiagnosisProbes()
        for node in 0..<nodes.count {
            runAgent(node)
            runServer(node)
        }
        checkOneRunningServerPerEpoch()
    }

    // MARK: invariants

    mutating func fail(_ message: String) {
        if violation == nil { violation = "\(now): \(message)" }
    }

    /// DESIGN.md §4.2 "At most one server accepts mutations for an export": per epoch, one node acknowledges
    /// (and `checkOneRunningServerPerEpoch` sees to one process at a time).
    mutating func acknowledge(_ record: SimRecord, on node: Int) {
        if let other = acknowledgingNode[record.epoch], other != node {
            fail("nodes \(other) and \(node) both acknowledged mutations in epoch \(record.epoch)")
        }
        acknowledgingNode[record.epoch] = node
        acknowledged.append(record)
        stats.acknowledged += 1
    }

    /// Epochs only grow; a new server starts with every acknowledged record (DESIGN.md §4.1).
    mutating func startServer(on node: Int, epoch: UInt64) {
        if let other = startedEpochs[epoch], other != node { fail("nodes \(other) and \(node) both started epoch \(epoch)") }
        if let newest = startedEpochs.keys.max(), epoch < newest { fail("server of epoch \(epoch) started after \(newest)") }
        if nodes[node].server != nil { fail("node \(node) started a second server") }
        let journal = nodes[node].journal
        for record in acknowledged where record.epoch < epoch {
            let index = Int(record.sequence) - 1
            if index >= journal.count || journal[index] != record {
                fail("acknowledged \(record) missing from node \(node)'s journal at the start of epoch \(epoch)")
            }
        }
        startedEpochs[epoch] = node
        var server = SimServer(id: nextServerID, epoch: epoch, nextHeartbeatAt: now)
        // A server restarted in place replicates again what its predecessor had not seen acknowledged.
        let acknowledgedHere = Set(acknowledged)
        for record in journal where record.epoch == epoch && !acknowledgedHere.contains(record) {
            server.unacknowledged[record.sequence] = Instant.zero
        }
        nodes[node].server = server
        nodes[node].isStandby = false
        note("node \(node) starts server \(nextServerID) at epoch \(epoch), journal \(journal.count)")
        nextServerID += 1
    }

    mutating func persist(_ epoch: UInt64, on node: Int) {
        if epoch < nodes[node].persistedEpoch { fail("node \(node) epoch went back from \(nodes[node].persistedEpoch) to \(epoch)") }
        nodes[node].persistedEpoch = epoch
        note("node \(node) persists epoch \(epoch)")
    }

    private mutating func checkOneRunningServerPerEpoch() {
        let epochs = nodes.compactMap { $0.server?.epoch }
        if Set(epochs).count != epochs.count { fail("two servers run epoch \(epochs)") }
    }

    // MARK: faults

    private mutating func chance(perMillion: UInt64) -> Bool { random.next() % 1_000_000 < perMillion }

    private mutating func milliseconds(_ range: ClosedRange<UInt64>) -> TimeSpan {
        .milliseconds(range.lowerBound + random.next() % (range.upperBound - range.lowerBound + 1))
    }

    private mutating func injectFaults() {
        for node in 0..<nodes.count where nodes[node].server != nil {
            if chance(perMillion: 1_500), now >= nodes[node].server!.stalledUntil {
                let span = milliseconds(50...1_500)
                nodes[node].server!.stalledUntil = now + span
                stats.stalls += 1
                note("server on node \(node) stalls for \(span)")
            }
            if chance(perMillion: 500) {
                stats.crashes += 1
                note("server on node \(node) crashes")
                killServer(on: node, tellSwap: true)
            }
        }
        if nodes.allSatisfy({ !isolated($0) }), chance(perMillion: 600) {
            let node = Int(random.next() % UInt64(nodes.count))
            let span = milliseconds(200...4_000)
            nodes[node].isolatedUntil = now + span
            stats.isolations += 1
            note("node \(node) isolated for \(span)")
        }
    }

    private mutating func killServer(on node: Int, tellSwap: Bool) {
        guard nodes[node].server != nil else { return }
        nodes[node].server = nil
        // On a node with a swap, the server is the swap's new server.
        if tellSwap { swapEvent(node, .serverExited) }
    }

    // MARK: network

    private func isolated(_ node: SimNode) -> Bool { now < node.isolatedUntil }

    private func linkUp(_ a: Int, _ b: Int) -> Bool { !isolated(nodes[a]) && !isolated(nodes[b]) }

    private mutating func send(from: Int, to: Int, toServer: Bool = false, _ message: SimMessage) {
        guard linkUp(from, to), random.next() % 1000 >= lossPerMille else { return }
        let delay = TimeSpan.milliseconds(1 + random.next() % maxDelayMilliseconds)
        inFlight.append(Envelope(deliverAt: now + delay, order: nextOrder, to: to, toServer: toServer, message: message))
        nextOrder += 1
    }

    private mutating func deliver() {
        let due = inFlight.filter { $0.deliverAt <= now }.sorted { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }
        inFlight.removeAll { $0.deliverAt <= now }
        for envelope in due where linkUp(1 - envelope.to, envelope.to) {
            if envelope.toServer {
                nodes[envelope.to].server?.inbox.append(envelope.message)
            } else {
                receive(envelope.message, at: envelope.to)
            }
        }
    }

    // MARK: node agent, replica, monitor

    private mutating func receive(_ message: SimMessage, at node: Int) {
        let peer = 1 - node
        switch message {
        case .record(let record, let server):
            replicate(record, from: server, at: node)
        case .heartbeat(let epoch, let sequence):
            monitorEvent(node, .heartbeatReceived(epoch: epoch, journalSequence: sequence))
        case .probeAnswer(let key, let epoch, let sequence, let response):
            monitorEvent(node, .probeAnswered(key: key, epoch: epoch, journalSequence: sequence, response: response))
        case .fence(let epoch):
            if let server = nodes[node].server, server.epoch <= epoch {
                note("agent on node \(node) fences server \(server.id) of epoch \(server.epoch)")
                killServer(on: node, tellSwap: false)
            }
            send(from: node, to: peer, .fenceDone)
        case .fenceDone:
            swapEvent(node, .fenceConfirmed)
        case .catchUp(let journal, let epoch):
            guard epoch >= nodes[node].persistedEpoch, nodes[node].swap == nil else { return }
            // The old server writes to this journal: it goes first (its records were never acknowledged).
            if let server = nodes[node].server, server.epoch < epoch { killServer(on: node, tellSwap: false) }
            guard nodes[node].server == nil else { return }
            nodes[node].journal = journal
            persist(epoch, on: node)
            send(from: node, to: peer, .caughtUp)
        case .caughtUp:
            swapEvent(node, .peerCaughtUp)
        case .monitorRequest(let epoch):
            guard epoch == nodes[node].persistedEpoch, nodes[node].server == nil else { return }
            nodes[node].isStandby = true
            startMonitor(on: node, epoch: epoch)
            send(from: node, to: peer, .monitorStarted)
        case .monitorStarted:
            swapEvent(node, .monitorStarted)
        case .recordAck, .recordRefused, .probe:
            preconditionFailure("server message \(message) delivered to an agent")
        }
    }

    /// The standby replica: `sync` mode acknowledges a record once it is in this journal.
    private mutating func replicate(_ record: SimRecord, from server: Int, at node: Int) {
        let peer = 1 - node
        var admitted = record.epoch == nodes[node].persistedEpoch && nodes[node].server == nil
        if nodes[node].swap != nil {
            admitted = swapEvent(node, .recordArrived(epoch: record.epoch)).contains(.acceptRecord)
        }
        if record.epoch < nodes[node].persistedEpoch || (nodes[node].swap?.epochDecided ?? false) {
            stats.refusedStaleRecords += 1
            send(from: node, to: peer, toServer: true, .recordRefused(server: server))
            return
        }
        guard admitted else { return }
        let journal = nodes[node].journal
        if record.sequence == UInt64(journal.count) + 1 {
            nodes[node].journal.append(record)
        } else if record.sequence > UInt64(journal.count) || journal[Int(record.sequence) - 1] != record {
            return // a gap or a conflicting record: the server sends it again
        }
        send(from: node, to: peer, toServer: true, .recordAck(sequence: record.sequence, server: server))
    }

    private mutating func startMonitor(on node: Int, epoch: UInt64) {
        var monitor = Monitor(secret: Self.secret)
        _ = monitor.handle(.started(epoch: epoch), at: now)
        nodes[node].monitor = monitor
        note("node \(node) monitors epoch \(epoch)")
    }

    private mutating func runAgent(_ node: Int) {
        let peer = 1 - node
        let reachable = linkUp(node, peer)
        if reachable {
            nodes[node].lastHeardPeer = now
            if !nodes[node].peerWasReachable { swapEvent(node, .peerReturned) }
            if nodes[node].diagnosis.state != .idle { diagnosisEvent(node, .peerHeard) }
        } else if now - nodes[node].lastHeardPeer > nodes[node].diagnosis.timings.agentHeartbeatGrace,
                  now >= nodes[node].nextDiagnosisAt {
            nodes[node].nextDiagnosisAt = now + .milliseconds(2_000)
            diagnosisEvent(node, .heartbeatsLost(lastHeard: nodes[node].lastHeardPeer))
        }
        nodes[node].peerWasReachable = reachable
        diagnosisEvent(node, .tick)
        swapEvent(node, .tick)
        if nodes[node].monitor != nil {
            let key = (0..<2).flatMap { _ in withUnsafeBytes(of: random.next()) { Array($0) } }
            monitorEvent(node, .tick(freshKey: key))
        }
        // The agent restarts a standby's monitor that stood down or whose swap failed.
        let watching = nodes[node].monitor?.isWatching ?? false
        if nodes[node].isStandby, !watching, nodes[node].server == nil, nodes[node].swap == nil,
           nodes[node].diagnosis.state != .selfFenced, now >= nodes[node].monitorRestartAt {
            startMonitor(on: node, epoch: nodes[node].persistedEpoch)
        }
    }

    private mutating func monitorEvent(_ node: Int, _ event: Monitor.Event) {
        guard var monitor = nodes[node].monitor else { return }
        let actions = monitor.handle(event, at: now)
        nodes[node].monitor = monitor
        for action in actions {
            switch action {
            case .sendProbe(let key):
                send(from: node, to: 1 - node, toServer: true, .probe(key: key))
            case .reportRoundTrip:
                break
            case .declareFailed(let reason):
                stats.declarations += 1
                note("node \(node) declares the server failed: \(reason)")
                guard nodes[node].swap == nil, nodes[node].server == nil else { break }
                nodes[node].swap = Swap(kind: .failover(reason), oldEpoch: nodes[node].persistedEpoch)
                swapEvent(node, .begin)
            case .standDown:
                nodes[node].monitor = nil
            }
        }
    }

    @discardableResult
    private mutating func swapEvent(_ node: Int, _ event: Swap.Event) -> [Swap.Action] {
        guard var swap = nodes[node].swap else { return [] }
        let actions = swap.handle(event, at: now)
        nodes[node].swap = swap
        for action in actions { perform(action, on: node) }
        return actions
    }

    private mutating func perform(_ action: Swap.Action, on node: Int) {
        let peer = 1 - node
        switch action {
        case .fence(let epoch), .fenceStaleServer(let epoch), .stopOldServer(let epoch):
            send(from: node, to: peer, .fence(epoch: epoch))
        case .runDiagnosis:
            if nodes[node].diagnosis.state == .selfFenced {
                swapEvent(node, .diagnosed(.selfIsolated))
            } else {
                diagnosisEvent(node, .heartbeatsLost(lastHeard: nodes[node].lastHeardPeer))
            }
        case .fenceThroughOperatingSystem(let epoch):
            guard linkUp(node, peer) else { return }
            if let server = nodes[peer].server, server.epoch <= epoch { killServer(on: peer, tellSwap: false) }
            swapEvent(node, .fenceConfirmed)
        case .persistEpoch(let epoch):
            persist(epoch, on: node)
            swapEvent(node, .epochPersisted(epoch))
        case .replayTail:
            swapEvent(node, .tailReplayed)
        case .startServer(let epoch):
            startServer(on: node, epoch: epoch)
            swapEvent(node, .serverStarted)
        case .catchUpPeer(let epoch):
            send(from: node, to: peer, .catchUp(journal: nodes[node].journal, epoch: epoch))
        case .requestMonitor(let epoch):
            send(from: node, to: peer, .monitorRequest(epoch: epoch))
        case .retireMonitor:
            nodes[node].monitor = nil
            swapEvent(node, .retired)
        case .acceptRecord, .refuseRecord, .raiseAlarm:
            break
        case .completed(let epoch):
            nodes[node].swap = nil
            stats.swapsCompleted += 1
            note("node \(node) completes the swap to epoch \(epoch)")
        case .failed(let failure):
            nodes[node].swap = nil
            nodes[node].monitorRestartAt = now + .milliseconds(500)
            stats.swapsFailed += 1
            note("node \(node) swap failed: \(failure)")
        case .quiesceServer, .resumeServer:
            preconditionFailure("this simulation runs no migrations")
        }
    }

    private mutating func diagnosisEvent(_ node: Int, _ event: Diagnosis.Event) {
        let actions = nodes[node].diagnosis.handle(event, at: now)
        for action in actions {
            switch action {
            case .probe(let target):
                pendingProbes.append((now + .milliseconds(2), node, target))
            case .decided(let verdict):
                note("node \(node) diagnosis: \(verdict)")
                swapEvent(node, .diagnosed(verdict))
            case .awaitingTakeover:
                break
            case .selfFence:
                stats.selfFences += 1
                note("node \(node) self-fences")
                // Self-fencing ends this node's part: its swap is abandoned, its server stopped for good.
                nodes[node].swap = nil
                killServer(on: node, tellSwap: false)
            }
        }
    }

    private mutating func answerDiagnosisProbes() {
        let due = pendingProbes.filter { $0.at <= now }
        pendingProbes.removeAll { $0.at <= now }
        for probe in due {
            let peer = 1 - probe.node
            let reached = switch probe.target {
            case .peerAgent, .peerOperatingSystem, .peerNIC: linkUp(probe.node, peer)
            case .networkSwitch: !isolated(nodes[probe.node])
            }
            if reached { diagnosisEvent(probe.node, .probeAnswered(probe.target)) }
        }
    }

    // MARK: export server

    private mutating func runServer(_ node: Int) {
        guard var server = nodes[node].server, now >= server.stalledUntil else { return }
        let peer = 1 - node
        let inbox = server.inbox
        server.inbox.removeAll()
        for message in inbox {
            switch message {
            case .recordAck(let sequence, let id) where id == server.id:
                if server.unacknowledged.removeValue(forKey: sequence) != nil {
                    acknowledge(SimRecord(sequence: sequence, epoch: server.epoch), on: node)
                }
            case .recordRefused(let id) where id == server.id:
                // A newer epoch exists: this server can acknowledge nothing more and exits.
                note("server \(server.id) of epoch \(server.epoch) learns it is stale and exits")
                nodes[node].server = nil
                return
            case .probe(let key):
                let sequence = UInt64(nodes[node].journal.count)
                let response = ChallengeMAC.response(secret: Self.secret, key: key, epoch: server.epoch, journalSequence: sequence)
                send(from: node, to: peer, .probeAnswer(key: key, epoch: server.epoch, journalSequence: sequence, response: response))
            default:
                break
            }
        }
        if now >= server.nextHeartbeatAt {
            send(from: node, to: peer, .heartbeat(epoch: server.epoch, journalSequence: UInt64(nodes[node].journal.count)))
            server.nextHeartbeatAt = now + .milliseconds(100)
        }
        if server.unacknowledged.count < SimServer.maxUnacknowledged, random.next() % 100 < 20 {
            let record = SimRecord(sequence: UInt64(nodes[node].journal.count) + 1, epoch: server.epoch)
            nodes[node].journal.append(record)
            server.unacknowledged[record.sequence] = now
            send(from: node, to: peer, .record(record, server: server.id))
        }
        for (sequence, sentAt) in server.unacknowledged.sorted(by: { $0.key < $1.key }) where now - sentAt >= .milliseconds(50) {
            server.unacknowledged[sequence] = now
            send(from: node, to: peer, .record(nodes[node].journal[Int(sequence) - 1], server: server.id))
        }
        nodes[node].server = server
    }

    private mutating func note(_ line: String) {
        trace.append("\(now) \(line)")
        if trace.count > Self.traceLimit { trace.removeFirst(trace.count - Self.traceLimit) }
    }
}
