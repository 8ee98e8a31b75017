@testable import BatonCore

/// A journal record as the simulation tracks it: position and the epoch that wrote it.
struct SimRecord: Hashable {
    var sequence: UInt64
    var epoch: UInt64
}

/// What crosses the simulated network.
enum SimMessage: Hashable {
    // To a node's agent: its replica, its monitor, its fence.
    case record(SimRecord, server: Int)
    /// `answeringAlone`: replies do not wait for the standby; otherwise they
    /// have waited for it since `repliesWaitThrough` (DESIGN.md §4.1).
    case heartbeat(epoch: UInt64, journalSequence: UInt64, answeringAlone: Bool, repliesWaitThrough: UInt64)
    case probeAnswer(key: [UInt8], epoch: UInt64, journalSequence: UInt64, response: [UInt8])
    case fence(epoch: UInt64, handOver: Bool)
    case fenceAnswer(fenced: Bool)
    /// A server's replication session with a standby not in step: the whole journal, as of `sentAt`.
    case catchUp(journal: [SimRecord], epoch: UInt64, server: Int, sentAt: Instant)
    /// `AgentRequest.outdate`: the agent of `server`'s node asks the peer to let it answer alone.
    case outdate(epoch: UInt64, server: Int, oldestWaiting: UInt64)
    case outdateAnswer(accepted: Bool, server: Int, oldestWaiting: UInt64)
    // To a node's export server.
    case caughtUp(through: UInt64, server: Int)
    case recordAck(sequence: UInt64, server: Int)
    case recordRefused(server: Int)
    /// The standby runs a swap against this server (`Refusal.swapUnderWay`): its replies must not stop waiting.
    case swapUnderWay(server: Int)
    /// The standby stood its replica down and closed the session: the server begins a new one.
    case sessionEnded(server: Int)
    /// From its own agent (`ServerControl.answerAlone`): go alone if replies still wait for that record.
    case answerAlone(oldestWaiting: UInt64)
    case probe(key: [UInt8])
}

struct Envelope {
    var deliverAt: Instant
    var order: Int
    var to: Int
    var toServer: Bool
    var message: SimMessage
}

/// An export server process, as deployed: in `sync` mode a mutation is
/// answered once the standby has it; a reply that waited longer than the
/// standby wait limit stops waiting, and the server answers alone until a
/// standby is caught up and has every record answered alone (then its
/// heartbeats say since when replies wait again, `repliesWait`). A promoted
/// server answers alone from the start. A stalled one (SIGSTOP) does nothing.
struct SimServer {
    static let maxUnacknowledged = 64
    static let resendAfter = TimeSpan.milliseconds(50)
    static let catchUpEvery = TimeSpan.milliseconds(200)
    let id: Int
    let epoch: UInt64
    var stalledUntil = Instant.zero
    var inbox: [SimMessage] = []
    var nextHeartbeatAt: Instant
    /// Sequence → when it was last sent to the standby.
    var unacknowledged: [UInt64: Instant] = [:]
    /// Sequence → since when its reply waits for the standby (sync mode only).
    var waiting: [UInt64: Instant] = [:]
    var answeringAlone = false
    /// Alone, with a standby caught up: alone until it has acknowledged this record.
    var aloneUntil: UInt64?
    /// Its replication session has brought the standby in step (a copy of the journal).
    var caughtUp = false
    var nextCatchUpAt = Instant.zero
    /// The last record answered without the standby.
    var repliesWaitThrough: UInt64 = 0
    /// A migration's hand-over: no new mutations, exit once the standby has
    /// every record; killed by its agent at this instant if it has not.
    var handOverKillAt: Instant?
    var handingOver: Bool { handOverKillAt != nil }
    /// Replies given while its node is isolated: they reach the client once
    /// the network is back, if this process still lives then.
    var heldReplies: [SimRecord] = []
    /// When it last ran: a longer gap (stopped, starved) is not time spent waiting for the standby.
    var lastRanAt: Instant
    /// Its agent's last answer at the wait limit (logged when it changes).
    var lastAloneAnswer: ExportRole.AnswerAlone?
    /// The agent asks the peer to stand its replica down at most this often (the server's wait checks).
    var nextOutdateAt = Instant.zero
}

/// A client mount: the newest epoch it has seen, and its requests not yet answered.
struct SimClient {
    var epoch: UInt64 = 1
    /// A mount made anew names one node's address (`mount demo@a`): it
    /// writes to that node's server only, until a request goes unanswered
    /// long enough for it to look at the other addresses (`moveClients`).
    var pinnedTo: Int?
    var lastAnswered = Instant.zero
    var outstanding: Set<SimRecord> = [] {
        didSet { if outstanding.isEmpty { outstandingSince = nil } }
    }
    var outstandingSince: Instant?
}

/// One storage node: its agent's durable epoch, its copy of the journal, and the roles it plays.
struct SimNode {
    var persistedEpoch: UInt64 = 1
    var journal: [SimRecord] = []
    var server: SimServer?
    var monitor: Monitor?
    var swap: Swap?
    var diagnosis = Diagnosis()
    /// Holds the standby replica.
    var isStandby: Bool
    /// This node's server answered writes its standby lacks (the `standby-outdated` marker).
    var standbyOutdated = false
    var isolatedUntil = Instant.zero
    /// The agent does nothing until then (SIGSTOP, or the whole node frozen with its server).
    var agentStalledUntil = Instant.zero
    var agentInbox: [SimMessage] = []
    /// `ExportController.serverExited`: a server that exited on its own is started again here at its epoch
    /// then, unless a fence came first; at most `maxRestarts` within `restartWindow`.
    var restartAt: (at: Instant, epoch: UInt64)?
    var restarts: [Instant] = []
    /// The agent's request port hangs (its threads starved, its descriptors used up) while its
    /// heartbeats go on: fences asked of it get no answer.
    var agentRequestsHungUntil = Instant.zero
    /// The replica answers nothing (its disk hangs) while the agent runs: scripted runs only.
    var replicaHungUntil = Instant.zero
    var lastHeardPeer = Instant.zero
    var agentLastRanAt = Instant.zero
    /// When the agent last ran again after a gap (`PeerWatch`'s `AgentRuns.resumedAt`).
    var agentResumedAt: Instant?
    var nextDiagnosisAt = Instant.zero
    /// When the ladder found the peer gone (dead, isolated, its agent down); cleared when it is heard.
    var peerFoundGoneAt: Instant?
    /// A fence asked of the peer and not yet answered: unanswered after this.
    var fenceUnansweredAt: Instant?
    /// Whether the monitor watches (the deployed `ReplicaWatch`; `monitor` carries it out).
    var watch = ReplicaWatch()
    /// The replica ended its session with the server (a stand-down for a server asking to answer
    /// alone, a long gap of its agent): it takes no record of that session, and no heartbeat counts
    /// as its `repliesWait`, until a session begun since.
    var sessionEndedAt: Instant?
}

struct SimulationStats: Equatable {
    var acknowledged = 0
    var acknowledgedAlone = 0
    var declarations = 0
    var migrations = 0
    var swapsCompleted = 0
    var swapsFailed = 0
    var takeoversWithoutFence = 0
    var refusedStaleRecords = 0
    var selfFences = 0
    var catchUps = 0
    var stalls = 0
    var crashes = 0
    var isolations = 0
    var freezes = 0
    var hungAgents = 0
    var agentStalls = 0
    var remounts = 0
    /// Replicas stood down for a server asking to answer alone, and asks refused (a swap under way).
    var standDowns = 0
    var standDownsRefused = 0
    var refusedByClients = 0

    static func += (a: inout SimulationStats, b: SimulationStats) {
        a.acknowledged += b.acknowledged
        a.acknowledgedAlone += b.acknowledgedAlone
        a.declarations += b.declarations
        a.migrations += b.migrations
        a.swapsCompleted += b.swapsCompleted
        a.swapsFailed += b.swapsFailed
        a.takeoversWithoutFence += b.takeoversWithoutFence
        a.refusedStaleRecords += b.refusedStaleRecords
        a.selfFences += b.selfFences
        a.catchUps += b.catchUps
        a.stalls += b.stalls
        a.crashes += b.crashes
        a.isolations += b.isolations
        a.freezes += b.freezes
        a.hungAgents += b.hungAgents
        a.agentStalls += b.agentStalls
        a.remounts += b.remounts
        a.standDowns += b.standDowns
        a.standDownsRefused += b.standDownsRefused
        a.refusedByClients += b.refusedByClients
    }
}

/// Two nodes running one export with the real Monitor, Swap and Diagnosis
/// state machines, over a seeded network that delays and loses messages,
/// with server stalls and crashes, node isolations, agent stalls and whole
/// node freezes, and migrations. Everything random comes from the seed, so a
/// run replays exactly (TigerBeetle's VOPR).
///
/// The agents do what `ExportController` does with the swap's actions: the
/// fenced node becomes the standby, the promoted server answers alone and
/// catches that standby up through its replication session, and a monitor
/// starts only once the server's replies wait for its replica again.
///
/// After every step it checks DESIGN.md §4.1 and §4.2: one server per epoch,
/// epochs only grow, every acknowledged record is in the journal of each
/// server started after it was acknowledged, and no server answers with a
/// history that lacks a record acknowledged in an older epoch (an old server
/// that answers after a newer one started loses nothing while no newer one
/// answers: the newer copy never serves).
struct FailoverWorld {
    static let step = TimeSpan.milliseconds(5)
    static let secret = Array("simulated-export-secret".utf8)
    static let traceLimit = 400
    /// As deployed (`standby_wait_limit_ms`).
    static let standbyWaitLimit = TimeSpan.milliseconds(UInt64(ClusterTimings.defaults.standbyWaitLimitMilliseconds))
    /// The agent's own deadline on a fence request.
    static let fenceAnswerDeadline = TimeSpan.milliseconds(400)
    /// A server that did not run for longer than this restarts its standby wait limit (`ReplicationLink`).
    static let runGapLimit = TimeSpan.milliseconds(1_000)
    static let restartDelay = TimeSpan.milliseconds(1_000)
    static let maxRestarts = 3
    static let restartWindow = TimeSpan.milliseconds(60_000)
    /// A request unanswered this long makes a client ask the other addresses for a newer epoch.
    static let clientMoveAfter = TimeSpan.milliseconds(1_000)
    /// A hand-over that has not drained by then ends in SIGKILL (`ExportProcess.handOver`).
    static let handOverGrace = TimeSpan.milliseconds(1_000)
    /// How often a server whose replies wait past the limit asks its agent again (`ReplicationLink`).
    static let waitCheckInterval = TimeSpan.milliseconds(250)

    let seed: UInt64
    private(set) var now = Instant.zero
    private(set) var nodes: [SimNode]
    private(set) var stats = SimulationStats()
    /// The first broken invariant, with the time it broke.
    private(set) var violation: String?
    /// The last events, for the report of a failing seed.
    private(set) var trace: [String] = []

    private var random: SplitMix64
    /// Remounts draw from a stream of their own: the runs of the seeds
    /// before remounts were modelled (the regression seeds) stay as they were
    /// until a first remount.
    private var remountRandom: SplitMix64
    /// Off for a scripted run: only what the test does happens.
    private let randomFaults: Bool
    private var inFlight: [Envelope] = []
    private var nextOrder = 0
    private var nextServerID = 1
    private var pendingProbes: [(at: Instant, node: Int, target: DiagnosisTarget)] = []
    private let lossPerMille: UInt64
    private let maxDelayMilliseconds: UInt64
    private let swapTimings: SwapTimings

    // History for the invariants.
    /// Epoch → the node whose server acknowledged in it. A node, not a process: a server restarted in
    /// place keeps its epoch.
    private var acknowledgingNode: [UInt64: Int] = [:]
    private var acknowledged: [SimRecord] = []
    private var startedEpochs: [UInt64: Int] = [:]
    private var clients = [SimClient(), SimClient()]
    /// Which client asked for each record.
    private var askedBy: [SimRecord: Int] = [:]

    private func contains(_ journal: [SimRecord], _ record: SimRecord) -> Bool {
        let index = Int(record.sequence) - 1
        return index < journal.count && journal[index] == record
    }

    init(seed: UInt64, swapTimings: SwapTimings = .defaults, randomFaults: Bool = true) {
        self.seed = seed
        self.swapTimings = swapTimings
        self.randomFaults = randomFaults
        random = SplitMix64(seed: seed)
        remountRandom = SplitMix64(seed: seed ^ 0x5EED_0F_4E3_0475)
        lossPerMille = random.next() % 60
        maxDelayMilliseconds = 2 + random.next() % 30
        nodes = [SimNode(isStandby: false), SimNode(isStandby: true)]
        note("loss \(lossPerMille)‰, delay up to \(maxDelayMilliseconds) ms")
        startServer(on: 0, epoch: 1, alone: false)
        watchEvent(1, .repliesWait(through: 0, applied: 0))
    }

    mutating func run(for duration: TimeSpan) {
        let end = now + duration
        while now < end, violation == nil { step() }
    }

    mutating func step() {
        now = now + Self.step
        if randomFaults { injectFaults() }
        deliver()
        answerDiagnosisProbes()
        moveClients()
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
    /// (and `checkOneRunningServerPerEpoch` sees to one process at a time). §4.1: a record acknowledged in an
    /// epoch older than one already started is in no journal that counts.
    mutating func acknowledge(_ record: SimRecord, on node: Int) {
        if let other = acknowledgingNode[record.epoch], other != node {
            fail("nodes \(other) and \(node) both acknowledged mutations in epoch \(record.epoch)")
        }
        // A server that answers with a history lacking an acknowledged record of an older epoch has lost it
        // (an old server answering after a newer one started loses nothing while no newer one answers).
        let journal = nodes[node].journal
        for earlier in acknowledged where earlier.epoch < record.epoch && !contains(journal, earlier) {
            fail("node \(node) acknowledged \(record) in a history without the acknowledged \(earlier): it is lost")
        }
        acknowledgingNode[record.epoch] = node
        acknowledged.append(record)
        stats.acknowledged += 1
    }

    /// The client that asked for `record` hears its reply (as
    /// `ServerConnection`): a reply of an epoch older than one it has seen is
    /// refused, so it acknowledges nothing.
    private mutating func clientReceives(_ record: SimRecord, on node: Int) {
        guard let asker = askedBy.removeValue(forKey: record) else { return }
        guard record.epoch >= clients[asker].epoch else {
            stats.refusedByClients += 1
            return
        }
        clients[asker].epoch = record.epoch
        clients[asker].lastAnswered = now
        clients[asker].outstanding.remove(record)
        acknowledge(record, on: node)
    }

    /// A client whose request goes unanswered for `clientMoveAfter` asks the
    /// other addresses and moves to a newer epoch's server that answers; it
    /// sends its unanswered requests there again (as new records here).
    private mutating func moveClients() {
        for client in clients.indices {
            guard let oldest = clients[client].outstandingSince, now - max(oldest, clients[client].lastAnswered) > Self.clientMoveAfter else {
                continue
            }
            for node in 0..<nodes.count where !isolated(nodes[node]) {
                guard let server = nodes[node].server, server.epoch > clients[client].epoch, now >= server.stalledUntil else { continue }
                clients[client].epoch = server.epoch
                clients[client].pinnedTo = nil
                clients[client].lastAnswered = now
                for record in clients[client].outstanding { askedBy[record] = nil }
                clients[client].outstanding.removeAll()
                note("client \(client) moves to the server of epoch \(server.epoch) on node \(node)")
            }
        }
    }

    /// Epochs only grow; a new server starts with every acknowledged record (DESIGN.md §4.1).
    mutating func startServer(on node: Int, epoch: UInt64, alone: Bool) {
        if let other = startedEpochs[epoch], other != node { fail("nodes \(other) and \(node) both started epoch \(epoch)") }
        // A restart in place keeps its epoch, newer ones may exist: it acknowledges nothing (its standby refuses it).
        if startedEpochs[epoch] == nil, let newest = startedEpochs.keys.max(), epoch < newest {
            fail("server of a new epoch \(epoch) started after \(newest)")
        }
        if nodes[node].server != nil { fail("node \(node) started a second server") }
        let journal = nodes[node].journal
        for record in acknowledged where record.epoch < epoch && !contains(journal, record) {
            fail("acknowledged \(record) missing from node \(node)'s journal at the start of epoch \(epoch)")
        }
        startedEpochs[epoch] = node
        var server = SimServer(id: nextServerID, epoch: epoch, nextHeartbeatAt: now, lastRanAt: now)
        // The `standby-outdated` marker outlives the process (a restart in place):
        // any record here may have been answered without the standby, so `repliesWait`
        // comes only once the standby holds them all, as the deployed session's end sends it.
        if nodes[node].standbyOutdated { server.repliesWaitThrough = UInt64(journal.count) }
        if alone { goAlone(&server, on: node) }
        nodes[node].server = server
        nodes[node].isStandby = false
        nodes[node].monitor = nil
        note("node \(node) starts server \(nextServerID) at epoch \(epoch)\(alone ? " alone" : ""), journal \(journal.count)")
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

    /// A node and how long its fault lasts, drawn in this order.
    private mutating func randomNodeAndSpan(_ range: ClosedRange<UInt64>) -> (node: Int, span: TimeSpan) {
        let node = Int(random.next() % UInt64(nodes.count))
        return (node, milliseconds(range))
    }

    // MARK: scripted faults (`randomFaults: false`)

    /// The server of `node` does nothing for `span` (SIGSTOP).
    mutating func stallServer(on node: Int, for span: TimeSpan) {
        nodes[node].server?.stalledUntil = now + span
        note("server on node \(node) stalls for \(span)")
    }

    /// The agent of `node` does nothing for `span` (SIGSTOP, hung); its server runs on.
    mutating func stallAgent(on node: Int, for span: TimeSpan) {
        nodes[node].agentStalledUntil = now + span
        note("node \(node)'s agent stalls for \(span)")
    }

    /// The agent of `node` answers no requests for `span`; its heartbeats go on.
    mutating func hangAgentRequests(on node: Int, for span: TimeSpan) {
        nodes[node].agentRequestsHungUntil = now + span
        note("node \(node)'s agent answers no requests for \(span)")
    }

    /// The replica of `node` answers nothing for `span` (its disk hangs); its agent runs on.
    mutating func hangReplica(on node: Int, for span: TimeSpan) {
        nodes[node].replicaHungUntil = now + span
        note("node \(node)'s replica hangs for \(span)")
    }

    /// Client `client` is mounted anew naming node `node`: it knows no epoch yet.
    mutating func remount(_ client: Int, naming node: Int) {
        for record in clients[client].outstanding { askedBy[record] = nil }
        clients[client] = SimClient(epoch: 0, pinnedTo: node)
        stats.remounts += 1
        note("client \(client) is mounted anew, naming node \(node)")
    }

    private mutating func injectFaults() {
        // Client 1 (it writes seldom) is unmounted and mounted again now and then.
        if remountRandom.next() % 1_000_000 < 300 { remount(1, naming: Int(remountRandom.next() % 2)) }
        for node in 0..<nodes.count where nodes[node].server != nil {
            if chance(perMillion: 1_500), now >= nodes[node].server!.stalledUntil {
                let span = milliseconds(50...1_500)
                nodes[node].server!.stalledUntil = now + span
                stats.stalls += 1
                note("server on node \(node) stalls for \(span)")
            }
            if chance(perMillion: 400) {
                stats.crashes += 1
                note("server on node \(node) crashes")
                let epoch = nodes[node].server!.epoch
                nodes[node].server = nil
                scheduleRestart(on: node, epoch: epoch)
            }
        }
        if nodes.allSatisfy({ !isolated($0) }), chance(perMillion: 500) {
            let (node, span) = randomNodeAndSpan(200...8_000)
            nodes[node].isolatedUntil = now + span
            stats.isolations += 1
            note("node \(node) isolated for \(span)")
        }
        // A whole node frozen (a VM paused, a machine starved): the agent and
        // the server stop together; the network and the kernel still answer.
        if nodes.allSatisfy({ !agentStalled($0) }), chance(perMillion: 250) {
            let (node, span) = randomNodeAndSpan(500...9_000)
            nodes[node].agentStalledUntil = now + span
            if nodes[node].server != nil { nodes[node].server!.stalledUntil = max(nodes[node].server!.stalledUntil, now + span) }
            stats.freezes += 1
            note("node \(node) frozen for \(span)")
        }
        // An agent stopped alone (SIGSTOP, a debugger): its server runs on.
        if nodes.allSatisfy({ !agentStalled($0) }), chance(perMillion: 150) {
            let (node, span) = randomNodeAndSpan(500...12_000)
            nodes[node].agentStalledUntil = now + span
            stats.agentStalls += 1
            note("node \(node)'s agent stalls for \(span)")
        }
        if chance(perMillion: 250) {
            let (node, span) = randomNodeAndSpan(1_000...10_000)
            nodes[node].agentRequestsHungUntil = now + span
            stats.hungAgents += 1
            note("node \(node)'s agent answers no requests for \(span)")
        }
        // An admin's `baton migrate`, on the standby whose monitor watches.
        for node in 0..<nodes.count where nodes[node].monitor?.isWatching == true && nodes[node].swap == nil
            && !agentStalled(nodes[node]) {
            guard chance(perMillion: 150) else { continue }
            stats.migrations += 1
            note("node \(node) migrates the export to itself")
            watchEvent(node, .swapBegan)
            nodes[node].swap = Swap(kind: .migration, oldEpoch: nodes[node].persistedEpoch, timings: swapTimings)
            swapEvent(node, .begin)
        }
    }

    // MARK: network

    private func isolated(_ node: SimNode) -> Bool { now < node.isolatedUntil }
    private func agentStalled(_ node: SimNode) -> Bool { now < node.agentStalledUntil }

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
                // A stalled agent's socket buffers keep what arrives.
                nodes[envelope.to].agentInbox.append(envelope.message)
            }
        }
    }

    // MARK: node agent, replica, monitor

    private mutating func receive(_ message: SimMessage, at node: Int) {
        let peer = 1 - node
        switch message {
        case .record(let record, let server):
            replicate(record, from: server, at: node)
        case .heartbeat(let epoch, let sequence, let alone, let through):
            if alone {
                // Replies do not wait for this replica: a failover to it could lose them.
                if nodes[node].monitor != nil { note("node \(node)'s monitor stands down: the server answers alone") }
                watchEvent(node, .serverAnswersAlone)
            } else if nodes[node].isStandby, nodes[node].server == nil, nodes[node].sessionEndedAt == nil,
                      epoch == nodes[node].persistedEpoch, nodes[node].diagnosis.state != .selfFenced {
                // `repliesWait`: the server answered nothing past `through` without this replica.
                watchEvent(node, .repliesWait(through: through, applied: UInt64(nodes[node].journal.count)))
            }
            monitorEvent(node, .heartbeatReceived(epoch: epoch, journalSequence: sequence))
        case .probeAnswer(let key, let epoch, let sequence, let response):
            monitorEvent(node, .probeAnswered(key: key, epoch: epoch, journalSequence: sequence, response: response))
        case .fence(let epoch, let handOver):
            guard now >= nodes[node].agentRequestsHungUntil else { return note("node \(node)'s agent does not answer the fence") }
            fence(epoch: epoch, handOver: handOver, on: node)
        case .fenceAnswer(let fenced):
            guard nodes[node].swap != nil else { return }
            nodes[node].fenceUnansweredAt = nil
            swapEvent(node, .fenceAnswered(fenced: fenced))
        case .catchUp(let journal, let epoch, let server, let sentAt):
            // `replicaHello` and the copy: a newer server makes an older one here step down.
            guard epoch >= nodes[node].persistedEpoch, nodes[node].swap == nil,
                  nodes[node].diagnosis.state != .selfFenced, now >= nodes[node].replicaHungUntil else { return }
            // TCP: nothing of a session closed by a stand-down arrives after it.
            if let stoodDown = nodes[node].sessionEndedAt {
                guard sentAt > stoodDown else { return }
                nodes[node].sessionEndedAt = nil
            }
            if let own = nodes[node].server {
                guard own.epoch < epoch else { return }
                note("node \(node)'s server \(own.id) of epoch \(own.epoch) steps down for epoch \(epoch)")
                nodes[node].server = nil
            }
            // A copy overtaken on the network by this server's own later records (TCP keeps them in
            // order): those stay, records of older epochs after the copy are dropped.
            let newer = nodes[node].journal.dropFirst(journal.count).prefix { $0.epoch == epoch }
            nodes[node].journal = journal + newer
            nodes[node].isStandby = true
            nodes[node].standbyOutdated = false
            watchEvent(node, .sessionBegan)
            if epoch > nodes[node].persistedEpoch { persist(epoch, on: node) }
            stats.catchUps += 1
            send(from: node, to: peer, toServer: true, .caughtUp(through: UInt64(journal.count), server: server))
        case .outdate(let epoch, let server, let oldest):
            guard now >= nodes[node].agentRequestsHungUntil else { return note("node \(node)'s agent does not answer the outdate request") }
            let decision = ExportRole.outdate(swapUnderWay: nodes[node].swap != nil, ownEpoch: nodes[node].persistedEpoch, asked: epoch)
            if decision == .standDown {
                if nodes[node].sessionEndedAt == nil { note("node \(node) stands its replica down: server \(server) asks to answer alone") }
                stats.standDowns += 1
                watchEvent(node, .stoodDown)
            } else {
                stats.standDownsRefused += 1
                note("node \(node) keeps its replica up for server \(server): \(decision)")
            }
            send(from: node, to: peer, .outdateAnswer(accepted: decision == .standDown, server: server, oldestWaiting: oldest))
        case .outdateAnswer(let accepted, let server, let oldest):
            // Over the local pipe: the server reads it when it runs.
            guard accepted, nodes[node].server?.id == server else { return }
            nodes[node].server!.inbox.append(.answerAlone(oldestWaiting: oldest))
        case .caughtUp, .recordAck, .recordRefused, .swapUnderWay, .sessionEnded, .answerAlone, .probe:
            preconditionFailure("server message \(message) delivered to an agent")
        }
    }

    private mutating func scheduleRestart(on node: Int, epoch: UInt64) {
        nodes[node].restarts.removeAll { now - $0 >= Self.restartWindow }
        guard nodes[node].restarts.count < Self.maxRestarts else { return note("node \(node) does not start its server again") }
        nodes[node].restarts.append(now)
        nodes[node].restartAt = (now + Self.restartDelay, epoch)
    }

    /// `ExportController.fence`: a server of this epoch or older is killed
    /// (handed over first, for a migration) and this node becomes the
    /// standby; unless it answered writes its standby lacks, then it serves on.
    private mutating func fence(epoch: UInt64, handOver: Bool, on node: Int) {
        let peer = 1 - node
        guard let server = nodes[node].server else {
            // A server that exited and waits for its restart is still this node's role.
            if let restart = nodes[node].restartAt, restart.epoch <= epoch {
                if !handOver, nodes[node].standbyOutdated {
                    note("node \(node) refuses the fence: its exited server answered writes the peer lacks")
                    return send(from: node, to: peer, .fenceAnswer(fenced: false))
                }
                nodes[node].restartAt = nil
                nodes[node].isStandby = true
            }
            send(from: node, to: peer, .fenceAnswer(fenced: true))
            return
        }
        if server.epoch > epoch { return send(from: node, to: peer, .fenceAnswer(fenced: false)) }
        if !handOver, nodes[node].standbyOutdated {
            note("node \(node) refuses the fence: its server answered writes the peer lacks")
            return send(from: node, to: peer, .fenceAnswer(fenced: false))
        }
        if handOver, !server.unacknowledged.isEmpty {
            // Drains first: the answer comes once the standby has every record (`runServer`).
            nodes[node].server!.handOverKillAt = now + Self.handOverGrace
            return
        }
        note("agent on node \(node) fences server \(server.id) of epoch \(server.epoch)")
        nodes[node].server = nil
        nodes[node].isStandby = true
        send(from: node, to: peer, .fenceAnswer(fenced: true))
    }

    /// The standby replica: takes the current epoch's records in order, refuses older epochs'.
    private mutating func replicate(_ record: SimRecord, from server: Int, at node: Int) {
        let peer = 1 - node
        guard now >= nodes[node].replicaHungUntil else { return }
        if record.epoch < nodes[node].persistedEpoch {
            stats.refusedStaleRecords += 1
            send(from: node, to: peer, toServer: true, .recordRefused(server: server))
            return
        }
        if let swap = nodes[node].swap, !swap.takesOldRecords {
            return send(from: node, to: peer, toServer: true, .swapUnderWay(server: server))
        }
        // A stood-down replica's session is closed: every record sent on it fails.
        if nodes[node].sessionEndedAt != nil { return send(from: node, to: peer, toServer: true, .sessionEnded(server: server)) }
        guard record.epoch == nodes[node].persistedEpoch, nodes[node].server == nil, nodes[node].isStandby else { return }
        let journal = nodes[node].journal
        if record.sequence == UInt64(journal.count) + 1 {
            nodes[node].journal.append(record)
            watchEvent(node, .applied(record.sequence))
        } else if record.sequence > UInt64(journal.count) || journal[Int(record.sequence) - 1] != record {
            return // a gap or a conflicting record: the server sends it again, or catches this replica up
        }
        send(from: node, to: peer, toServer: true, .recordAck(sequence: record.sequence, server: server))
    }

    /// Feeds the node's `ReplicaWatch` and carries out its actions, as `ExportController.carryOutLocked` does.
    private mutating func watchEvent(_ node: Int, _ event: ReplicaWatch.Event) {
        for action in nodes[node].watch.handle(event) {
            switch action {
            case .startMonitor: startMonitor(on: node, epoch: nodes[node].persistedEpoch)
            case .stopMonitor: nodes[node].monitor = nil
            case .endSession:
                // The connection closes: the server sees it and begins a new session.
                nodes[node].sessionEndedAt = now
                if let server = nodes[1 - node].server?.id { send(from: node, to: 1 - node, toServer: true, .sessionEnded(server: server)) }
            }
        }
    }

    private mutating func startMonitor(on node: Int, epoch: UInt64) {
        var monitor = Monitor(authenticator: .testing(Self.secret))
        _ = monitor.handle(.started(epoch: epoch), at: now)
        nodes[node].monitor = monitor
        note("node \(node) monitors epoch \(epoch)")
    }

    private func peerReach(_ node: Int) -> Swap.PeerReach {
        Swap.PeerReach(selfIsolated: nodes[node].diagnosis.state == .selfFenced, foundGoneAt: nodes[node].peerFoundGoneAt,
                       heardOnSomePath: now - nodes[node].lastHeardPeer <= nodes[node].diagnosis.timings.agentHeartbeatGrace,
                       lastHeard: nodes[node].lastHeardPeer)
    }

    private mutating func runAgent(_ node: Int) {
        guard !agentStalled(nodes[node]) else { return }
        let gap = now - nodes[node].agentLastRanAt
        nodes[node].agentLastRanAt = now
        if gap > PeerLiveness.runGapLimit {
            nodes[node].agentResumedAt = now
            // `PeerLiveness.ran`: the agent's own silence is not the peer's.
            nodes[node].lastHeardPeer = max(nodes[node].lastHeardPeer, now)
            // `ExportController.agentResumed`: a replica that refused nothing for the wait limit may be outdated.
            if nodes[node].monitor != nil, gap >= swapTimings.outdatingGap {
                note("node \(node)'s monitor waits for the server's next session after a gap of \(gap)")
            }
            watchEvent(node, .agentResumed(gap: gap, limit: swapTimings.outdatingGap))
            swapEvent(node, .agentResumed(gap: gap))
        }
        let inbox = nodes[node].agentInbox
        nodes[node].agentInbox.removeAll()
        for message in inbox { receive(message, at: node) }
        let peer = 1 - node
        // The peer's agent heartbeats: heard while the link is up and it runs.
        if linkUp(node, peer), !agentStalled(nodes[peer]) {
            nodes[node].lastHeardPeer = now
            nodes[node].peerFoundGoneAt = nil
            if nodes[node].diagnosis.state != .idle { diagnosisEvent(node, .peerHeard) }
        } else if now - nodes[node].lastHeardPeer > nodes[node].diagnosis.timings.agentHeartbeatGrace,
                  now >= nodes[node].nextDiagnosisAt {
            nodes[node].nextDiagnosisAt = now + .milliseconds(2_000)
            diagnosisEvent(node, .heartbeatsLost(lastHeard: nodes[node].lastHeardPeer))
        }
        diagnosisEvent(node, .tick)
        if let restart = nodes[node].restartAt, now >= restart.at {
            nodes[node].restartAt = nil
            if nodes[node].server == nil, nodes[node].swap == nil, nodes[node].diagnosis.state != .selfFenced,
               restart.epoch == nodes[node].persistedEpoch {
                note("agent on node \(node) starts its exited server again")
                startServer(on: node, epoch: restart.epoch, alone: false)
            }
        }
        if let killAt = nodes[node].server?.handOverKillAt, now >= killAt {
            note("agent on node \(node) kills its server: the hand-over did not drain in time")
            nodes[node].server = nil
            nodes[node].isStandby = true
            send(from: node, to: peer, .fenceAnswer(fenced: true))
        }
        if let deadline = nodes[node].fenceUnansweredAt, now >= deadline {
            nodes[node].fenceUnansweredAt = nil
            swapEvent(node, .fenceUnanswered)
        }
        swapEvent(node, .tick(peer: peerReach(node)))
        if nodes[node].monitor != nil {
            let key = (0..<2).flatMap { _ in withUnsafeBytes(of: random.next()) { Array($0) } }
            monitorEvent(node, .tick(freshKey: key))
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
                watchEvent(node, .swapBegan)
                nodes[node].swap = Swap(kind: .failover(reason), oldEpoch: nodes[node].persistedEpoch, timings: swapTimings)
                swapEvent(node, .begin)
            case .standDown:
                nodes[node].monitor = nil
            }
        }
    }

    /// Feeds `event` to the node's swap and carries out its actions, as
    /// `ExportController.swapEvent` does; local steps answer at once.
    private mutating func swapEvent(_ node: Int, _ event: Swap.Event) {
        var events = [event]
        while !events.isEmpty, var swap = nodes[node].swap {
            let actions = swap.handle(events.removeFirst(), at: now)
            nodes[node].swap = swap
            for action in actions {
                if let answer = perform(action, on: node) { events.append(answer) }
            }
        }
    }

    private mutating func perform(_ action: Swap.Action, on node: Int) -> Swap.Event? {
        let peer = 1 - node
        switch action {
        case .stopMonitor:
            nodes[node].monitor = nil
        case .refuseOldRecords, .abandonNextServer:
            break  // `replicate` asks the swap; the next server is not modelled apart from its promotion.
        case .startNextServer:
            return .nextServerReady
        case .diagnosePeer:
            diagnosisEvent(node, .heartbeatsLost(lastHeard: nodes[node].lastHeardPeer))
        case .fence(let epoch, let handOver):
            nodes[node].fenceUnansweredAt = now + Self.fenceAnswerDeadline
            send(from: node, to: peer, .fence(epoch: epoch, handOver: handOver))
        case .writeWarmCheckpoint:
            return .checkpointWritten
        case .persistEpoch(let epoch):
            persist(epoch, on: node)
            return .epochPersisted
        case .promote(let epoch):
            startServer(on: node, epoch: epoch, alone: true)
            return .promoted
        case .returnToStandby(let watch):
            nodes[node].isStandby = true
            watchEvent(node, .swapEnded(watch: watch))
        case .raiseAlarm(let alarm):
            if alarm == .fenceUnconfirmed { stats.takeoversWithoutFence += 1 }
        case .completed(let epoch):
            watchEvent(node, .swapEnded(watch: false))
            nodes[node].swap = nil
            nodes[node].fenceUnansweredAt = nil
            stats.swapsCompleted += 1
            note("node \(node) completes the swap to epoch \(epoch)")
        case .failed(let failure):
            nodes[node].swap = nil
            nodes[node].fenceUnansweredAt = nil
            stats.swapsFailed += 1
            note("node \(node) swap failed: \(failure)")
        }
        return nil
    }

    private mutating func diagnosisEvent(_ node: Int, _ event: Diagnosis.Event) {
        let actions = nodes[node].diagnosis.handle(event, at: now)
        for action in actions {
            switch action {
            case .probe(let target):
                pendingProbes.append((now + .milliseconds(2), node, target))
            case .decided(let verdict):
                note("node \(node) diagnosis: \(verdict)")
                if verdict == .peerDeadOrIsolated || verdict == .peerAgentDown { nodes[node].peerFoundGoneAt = now }
            case .awaitingTakeover:
                break
            case .selfFence:
                stats.selfFences += 1
                note("node \(node) self-fences")
                // `ExportController.selfFence`: the server stops; this copy is no longer the one to serve.
                nodes[node].server = nil
                nodes[node].standbyOutdated = false
            }
        }
    }

    private mutating func answerDiagnosisProbes() {
        let due = pendingProbes.filter { $0.at <= now }
        pendingProbes.removeAll { $0.at <= now }
        for probe in due {
            let peer = 1 - probe.node
            let reached = switch probe.target {
            case .peerAgent: linkUp(probe.node, peer) && !agentStalled(nodes[peer])
            case .peerOperatingSystem, .peerNIC: linkUp(probe.node, peer)
            case .networkSwitch: !isolated(nodes[probe.node])
            }
            if reached { diagnosisEvent(probe.node, .probeAnswered(probe.target)) }
        }
    }

    // MARK: export server

    private mutating func goAlone(_ server: inout SimServer, on node: Int) {
        // The marker is written before the first reply answered alone.
        nodes[node].standbyOutdated = true
        server.answeringAlone = true
        server.aloneUntil = nil
        server.caughtUp = false
        for sequence in server.waiting.keys.sorted() { answer(SimRecord(sequence: sequence, epoch: server.epoch), &server, on: node) }
        server.waiting.removeAll()
    }

    /// The server replies; once the client hears it, the record counts as acknowledged.
    private mutating func answer(_ record: SimRecord, _ server: inout SimServer, on node: Int) {
        if server.answeringAlone {
            server.repliesWaitThrough = max(server.repliesWaitThrough, record.sequence)
            stats.acknowledgedAlone += 1
        }
        if isolated(nodes[node]) { server.heldReplies.append(record) } else { clientReceives(record, on: node) }
    }

    private mutating func runServer(_ node: Int) {
        guard var server = nodes[node].server, now >= server.stalledUntil else { return }
        let peer = 1 - node
        if now - server.lastRanAt > Self.runGapLimit {
            // `ReplicationLink`: the time it did not run is not held against the standby.
            for sequence in server.waiting.keys { server.waiting[sequence] = now }
        }
        server.lastRanAt = now
        if !isolated(nodes[node]) {
            for record in server.heldReplies { clientReceives(record, on: node) }
            server.heldReplies.removeAll()
        }
        let inbox = server.inbox
        server.inbox.removeAll()
        for message in inbox {
            switch message {
            case .recordAck(let sequence, let id) where id == server.id:
                guard server.unacknowledged.removeValue(forKey: sequence) != nil else { break }
                if server.waiting.removeValue(forKey: sequence) != nil {
                    answer(SimRecord(sequence: sequence, epoch: server.epoch), &server, on: node)
                }
            case .recordRefused(let id) where id == server.id:
                // A newer epoch exists; as deployed, the server only stops getting acknowledgements
                // from that standby (its agent stops it when the newer server's session reaches it).
                break
            case .swapUnderWay(let id) where id == server.id:
                // The standby may take over: answering alone now could lose what it answered.
                for sequence in server.waiting.keys { server.waiting[sequence] = now }
            case .sessionEnded(let id) where id == server.id:
                server.caughtUp = false
            case .answerAlone(let oldest):
                // A consent that comes after the standby caught up again is stale: its monitor may watch.
                guard !server.answeringAlone, server.waiting.keys.min() == oldest else { break }
                note("server \(server.id) answers alone: node \(peer) stood its replica down")
                goAlone(&server, on: node)
            case .caughtUp(let through, let id) where id == server.id && !server.caughtUp:
                server.caughtUp = true
                if server.answeringAlone { server.aloneUntil = UInt64(nodes[node].journal.count) }
                for sequence in server.unacknowledged.keys.sorted() where sequence <= through {
                    server.unacknowledged.removeValue(forKey: sequence)
                    if server.waiting.removeValue(forKey: sequence) != nil {
                        answer(SimRecord(sequence: sequence, epoch: server.epoch), &server, on: node)
                    }
                }
            case .probe(let key):
                let sequence = UInt64(nodes[node].journal.count)
                let response = ChallengeMAC.response(.testing(Self.secret), key: key, epoch: server.epoch, journalSequence: sequence)
                send(from: node, to: peer, .probeAnswer(key: key, epoch: server.epoch, journalSequence: sequence, response: response))
            default:
                break
            }
        }
        // Alone with a standby caught up: once it has every record answered alone, replies wait for it again.
        if server.answeringAlone, server.caughtUp, let until = server.aloneUntil,
           !server.unacknowledged.keys.contains(where: { $0 <= until }) {
            server.answeringAlone = false
            server.aloneUntil = nil
            nodes[node].standbyOutdated = false
            note("server \(server.id) replies wait for the standby again, through \(server.repliesWaitThrough)")
        }
        // Every session begins with the standby's position; a standby not in step takes a copy.
        if !server.caughtUp, now >= server.nextCatchUpAt {
            server.nextCatchUpAt = now + SimServer.catchUpEvery
            send(from: node, to: peer, .catchUp(journal: nodes[node].journal, epoch: server.epoch, server: server.id, sentAt: now))
        }
        // `standby_wait_limit_ms`: a reply waits this long for the standby at most.
        // `standby_wait_limit_ms`: past it, the server asks its agent whether to answer alone
        // (`ExportRole.answerAlone`); an agent that does not run now ran last long ago, and withholds.
        if !server.answeringAlone, let oldest = server.waiting.values.min(), now - oldest > Self.standbyWaitLimit {
            let answer = ExportRole.answerAlone(
                serving: !server.handingOver, peer: peerReach(node),
                agent: ExportRole.AgentRuns(lastRan: nodes[node].agentLastRanAt, resumedAt: nodes[node].agentResumedAt),
                now: now, waitLimit: Self.standbyWaitLimit)
            if answer != server.lastAloneAnswer {
                note("server \(server.id) waited \(Self.standbyWaitLimit) for the standby: its agent says \(answer)")
            }
            server.lastAloneAnswer = answer
            switch answer {
            case .consent:
                goAlone(&server, on: node)
            case .askPeer where now >= server.nextOutdateAt && !agentStalled(nodes[node]):
                server.nextOutdateAt = now + Self.waitCheckInterval
                send(from: node, to: peer, .outdate(epoch: server.epoch, server: server.id, oldestWaiting: server.waiting.keys.min()!))
            case .askPeer, .withhold:
                break
            }
        }
        if server.handingOver, server.unacknowledged.isEmpty {
            note("server \(server.id) handed over")
            nodes[node].server = nil
            nodes[node].isStandby = true
            send(from: node, to: peer, .fenceAnswer(fenced: true))
            return
        }
        if now >= server.nextHeartbeatAt {
            send(from: node, to: peer, .heartbeat(epoch: server.epoch, journalSequence: UInt64(nodes[node].journal.count),
                                                  answeringAlone: server.answeringAlone,
                                                  repliesWaitThrough: server.repliesWaitThrough))
            server.nextHeartbeatAt = now + .milliseconds(100)
        }
        // Clients reach a server only over the network; client 1 writes seldom, so it may not
        // have heard of a newer epoch when it writes again. A client writes to no server older than it knows.
        let asker = random.next() % 10 == 0 ? 1 : 0
        // The window bounds replies waiting for the standby; a server answering alone waits for none.
        if !isolated(nodes[node]), !server.handingOver,
           server.answeringAlone || server.unacknowledged.count < SimServer.maxUnacknowledged,
           clients[asker].epoch <= server.epoch, clients[asker].pinnedTo ?? node == node, random.next() % 100 < 20 {
            let record = SimRecord(sequence: UInt64(nodes[node].journal.count) + 1, epoch: server.epoch)
            askedBy[record] = asker
            clients[asker].outstanding.insert(record)
            clients[asker].outstandingSince = clients[asker].outstandingSince ?? now
            nodes[node].journal.append(record)
            server.unacknowledged[record.sequence] = now
            send(from: node, to: peer, .record(record, server: server.id))
            if server.answeringAlone { answer(record, &server, on: node) } else { server.waiting[record.sequence] = now }
        }
        for (sequence, sentAt) in server.unacknowledged.sorted(by: { $0.key < $1.key }) where now - sentAt >= SimServer.resendAfter {
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
