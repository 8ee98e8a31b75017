import BatonCore
import BatonRuntime
import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// One export on this node: its role (serving it, or standby replica and
/// monitor of the peer's server), and the swap between the two.
final class ExportController: @unchecked Sendable {
    let export: ExportConfiguration
    private let agent: NodeAgent
    private let logger: Logger
    let directory: String
    private let lock = NIOLock()
    /// Held while a replicated record is applied (see `replicate`).
    private let applyLock = NIOLock()
    private var role: Role = .starting
    private var lastFailover: (at: String, reason: String)?
    /// The replica connection in use; a newer one replaces it.
    private var replicaChannel: Channel?
    /// The copy arriving from the server, while one does (for `baton status`).
    private var copy: CopyProgress?
    /// The last catch-up's outcome, for `baton status`.
    private var lastCatchUp: ExportStatus.CatchUpDone?
    /// The last record the replica shares with the server, from the
    /// server's catch-up question: the replica's records after it are dropped.
    private var sharedUpTo: UInt64?
    /// When this node's server last exited on its own and was started again.
    private var restarts = ExportRole.Restarts()
    /// Whether the monitor watches the peer's server (under `lock`; its
    /// actions carried out by `carryOutLocked`).
    private var replicaWatch = ReplicaWatch()

    struct CopyProgress {
        var partial: Bool
        var receivedBytes = 0
        var expectedBytes: UInt64
        var kind: String { partial ? "partial" : "full" }
    }

    enum Role {
        case starting
        /// This node's export server runs.
        case serving(ExportProcess)
        /// This node keeps the standby replica; the monitor watches the
        /// peer's server once its replies wait for this replica (`repliesWait`).
        case standby(ExportStore, MonitorRunner?)
        /// A planned swap waits for the old server to hand over: its last
        /// records are still applied here; the monitor is retired.
        case handingOver(ExportStore)
        /// The swap is under way: records from the old server are refused.
        case swapping
        /// This node found itself isolated and stopped the export's server;
        /// it serves again, or becomes the standby, once the peer is heard.
        case selfFenced
        /// This node started without hearing its peer and cannot show that
        /// its copy is the newest: it waits for the peer (or an admin's
        /// `baton force-serve`). `why` is for the log and `baton status`.
        case waitingForPeer(why: String)
    }

    init(export: ExportConfiguration, agent: NodeAgent, logger: Logger) {
        self.export = export
        self.agent = agent
        self.logger = logger
        self.directory = agent.me.dataDirectory + "/" + export.name
        self.swapQueue = DispatchQueue(label: "baton.swap.\(export.name)")
    }

    private var servingMarker: String { directory + "/serving" }
    private var standbyOutdatedMarker: String { ExportStore.standbyOutdatedMarker(in: directory) }

    /// The epoch in this node's data directory of the export.
    private var currentEpoch: UInt64 {
        (try? String(contentsOfFile: directory + "/epoch", encoding: .utf8)).flatMap {
            UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines))
        } ?? 0
    }
    private var clientAddress: NodeAddress { agent.clientAddress(export, on: agent.me) }
    /// The peer's monitor port at each of its addresses: the monitor probes on every path.
    private var peerMonitorAddresses: [NodeAddress] {
        agent.peer.agentAddresses.map { NodeAddress(host: $0.host, port: export.monitorPort) }
    }

    /// Takes up the role `ExportRole.start` decides at agent start.
    /// `peerServes` nil: the peer's agent did not answer.
    func start(peerServes: Bool?) {
        let copy = ExportRole.LocalCopy(isNew: !Disk.exists(directory), servedHere: Disk.exists(servingMarker),
                                        answeredAlone: Disk.exists(standbyOutdatedMarker),
                                        preferredHere: export.preferredNode == agent.me.name)
        take(ExportRole.start(copy, peerServes: peerServes))
    }

    private func take(_ start: ExportRole.Start) {
        if case .waitForPeer(let why) = start { return waitForPeer(why: why) }
        do {
            try Disk.makeDirectory(agent.me.dataDirectory)
            if case .serve(let alone) = start { try startServing(aloneFromStart: alone) } else { try startStandby() }
        } catch {
            logger.critical("cannot start the export on this node", metadata: [
                "export": "\(export.name)", "node": "\(agent.me.name)", "error": "\(error)",
                "action": "check the data directory \(directory) and the log above",
            ])
        }
    }

    private func startServing(aloneFromStart: Bool) throws {
        try Disk.makeDirectory(directory)
        try Disk.writeAtomically(Array("serving\n".utf8), to: servingMarker, directory: directory)
        let process = try makeServer(awaitPromotion: false)
        lock.withLock { role = .serving(process) }
        if aloneFromStart, agent.peerWatch.peerGoneForTakeover {
            // The peer is known to be gone: no standby to wait for. (Otherwise
            // the diagnosis of its silence says so, through `peerGone`, and a
            // standby that answers is caught up and waited for.)
            process.continueWithoutStandby()
        }
    }

    /// Starts this node's server of the export; with `awaitPromotion`, one
    /// that binds its socket and waits for `promote` (the next server of a swap).
    private func makeServer(awaitPromotion: Bool) throws -> ExportProcess {
        try ExportProcess(
            executable: agent.executable, exportName: export.name, dataDirectory: directory, listen: clientAddress,
            monitorListen: agent.monitorAddress(export, on: agent.me),
            pathAddresses: agent.me.agentAddresses.dropFirst().map(\.host),
            exportAddresses: [agent.me, agent.peer].flatMap(\.agentAddresses).map { NodeAddress(host: $0.host, port: export.port) },
            multipath: agent.isMultipath,
            secretFile: agent.configuration.secretFile, tls: agent.tls?.files, access: export.access, squash: export.squash, lockLeaseMilliseconds: export.lockLeaseMilliseconds, standby: agent.peerAgentAddress,
            standbyPathAddresses: agent.peer.agentAddresses.dropFirst().map { NodeAddress(host: $0.host, port: $0.port) }, node: agent.me.name,
            replication: export.replication,
            standbyWaitLimitMilliseconds: agent.configuration.timings.standbyWaitLimitMilliseconds,
            metrics: agent.me.metrics != nil, awaitPromotion: awaitPromotion, group: agent.group, logger: logger,
            onAskToAnswerAlone: { [weak self] waited, oldest in
                self?.serverAsksToAnswerAlone(waitedMilliseconds: waited, oldestWaiting: oldest)
            }
        ) { [weak self] status in self?.serverExited(status) }
    }

    private func startStandby() throws {
        try Disk.makeDirectory(directory)
        try? Disk.remove(servingMarker)
        let store: ExportStore
        do {
            store = try openReplicaStore()
        } catch {
            guard error.isDamage else { throw error }
            store = try replaceDamagedReplica()
        }
        lock.withLock { role = .standby(store, nil) }
        logger.info("standby replica ready", metadata: [
            "export": "\(export.name)", "epoch": "\(store.epoch)", "sequence": "\(store.appliedSequence)",
        ])
    }

    /// The replica's store. Its checkpoints are written in the background:
    /// sync replication has the server's clients wait for the replica's
    /// answers, and a checkpoint written inline (0.5 s after 100,000 small
    /// files) held them all.
    private func openReplicaStore() throws(StoreError) -> ExportStore {
        let store = try ExportStore(directory: directory, exportName: export.name, logger: logger)
        store.writesCheckpointsInBackground()
        return store
    }

    /// A standby whose copy does not open (a journal damaged by a power cut
    /// with pages written out of order, a bad disk sector) would keep the
    /// export without a standby for good. The export's copy that counts is
    /// the server's: the damaged one is set aside, kept for the admin, and an
    /// empty replica takes a full copy from the server.
    private func replaceDamagedReplica() throws -> ExportStore {
        let aside = directory + ".damaged-\(Int(Date().timeIntervalSince1970))"
        try Disk.rename(directory, to: aside)
        try Disk.syncDirectory(agent.me.dataDirectory)
        logger.critical("the standby replica does not open: set aside, a full copy from the server replaces it", metadata: [
            "export": "\(export.name)", "node": "\(agent.me.name)", "setAside": "\(aside)",
            "action": "none for the export; look at \(aside) for the cause (its log line above), then remove it",
        ])
        try Disk.makeDirectory(directory)
        return try openReplicaStore()
    }

    /// Waits until the peer's agent answers, then decides as at start.
    private func waitForPeer(why: String) {
        lock.withLock { role = .waitingForPeer(why: why) }
        logger.error("not serving the export: waiting for the peer", metadata: [
            "export": "\(export.name)", "node": "\(agent.me.name)", "peer": "\(agent.peer.name)", "why": "\(why)",
            "action": "start the agent of \(agent.peer.name); or, if it is lost for good, 'baton force-serve \(export.name) --node \(agent.me.name)' (writes made on \(agent.peer.name) since this node last served are then lost)",
        ])
        askPeerUntilItAnswers()
    }

    /// How often a node waiting for its peer asks it (each ask waits 1 s at most).
    static let peerAskInterval: TimeInterval = 0.5

    private func askPeerUntilItAnswers() {
        DispatchQueue.global().asyncAfter(deadline: .now() + Self.peerAskInterval) { [self] in
            guard case .waitingForPeer = lock.withLock({ role }) else { return }
            guard let peerExports = agent.peerServedExports() else { return askPeerUntilItAnswers() }
            decideAfterWaiting(peerServes: peerExports.contains(export.name))
        }
    }

    /// The peer answered: the start's decision, with what it said.
    private func decideAfterWaiting(peerServes: Bool) {
        let waited = lock.withLock { () -> Bool in
            guard case .waitingForPeer = role else { return false }
            role = .starting
            return true
        }
        guard waited else { return }
        logger.notice("the peer answers: deciding where the export is served", metadata: [
            "export": "\(export.name)", "peer": "\(agent.peer.name)", "peerServes": "\(peerServes)",
        ])
        start(peerServes: peerServes)
    }

    /// An admin's `baton force-serve`: a node waiting for its peer serves
    /// its own copy without it.
    func forceServe() -> (Bool, String) {
        let why = lock.withLock { () -> String? in
            guard case .waitingForPeer(let why) = role else { return nil }
            role = .starting
            return why
        }
        guard let why else {
            return (false, "\(export.name) on \(agent.me.name) is not waiting for its peer: nothing to force (see baton status)")
        }
        logger.critical("serving the export without the peer, forced by an admin", metadata: [
            "export": "\(export.name)", "node": "\(agent.me.name)", "peer": "\(agent.peer.name)", "why it waited": "\(why)",
            "lost": "any write made on \(agent.peer.name) after this node last served \(export.name)",
        ])
        do {
            try startServing(aloneFromStart: true)
            // Its copy is the one that counts from now on, even across a restart without the peer.
            try Disk.writeAtomically(Array("\(currentEpoch)\n".utf8), to: standbyOutdatedMarker, directory: directory)
            return (true, "\(export.name) is served on \(agent.me.name) without \(agent.peer.name); writes made on \(agent.peer.name) after this node last served it are lost")
        } catch {
            return (false, "\(export.name) did not start on \(agent.me.name): \(error)")
        }
    }

    /// A server that exits on its own is started again here, as
    /// `ExportRole.Restarts` allows, unless the peer's monitor has begun a
    /// swap by then (its fence changes the role first).
    private func serverExited(_ status: Int32) {
        let now = MonitorRunner.now()
        let (exited, restart) = lock.withLock { () -> (ExportProcess?, Bool) in
            guard case .serving(let process) = role, !process.isRunning else { return (nil, false) }
            return (process, restarts.exited(at: now))
        }
        guard let exited else { return }
        logger.error("export server exited", metadata: [
            "export": "\(export.name)", "status": "\(status)",
            "action": restart
                ? "starting it again here in \(ExportRole.Restarts.delay), unless the monitor on \(agent.peer.name) takes the export over first"
                : "it exited \(ExportRole.Restarts.maxRestarts) times within \(ExportRole.Restarts.window): not started again; see its log above, then restart this agent",
        ])
        guard restart else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(ExportRole.Restarts.delay.nanoseconds))) { [self] in
            let stillDown = lock.withLock { () -> Bool in
                guard case .serving(let current) = role, current === exited else { return false }
                role = .starting
                return true
            }
            guard stillDown else { return }
            do {
                try startServing(aloneFromStart: true)
            } catch {
                logger.critical("the export server did not start again", metadata: [
                    "export": "\(export.name)", "error": "\(error)", "action": "see the log above, then restart this agent",
                ])
            }
        }
    }

    /// Where the server running here serves its metrics, if it does.
    var serverMetricsAddress: NodeAddress? {
        lock.withLock {
            guard case .serving(let process) = role else { return nil }
            return process.metricsAddress
        }
    }

    func stopServer() {
        let process: ExportProcess? = lock.withLock {
            guard case .serving(let process) = role else { return nil }
            role = .starting
            return process
        }
        process?.terminate()
    }

    // MARK: - What the diagnostic ladder found (DESIGN.md §6)

    /// The peer is dead, isolated or without its agent: a server here stops
    /// waiting for the standby there (a peer that comes back catches up).
    func peerGone() {
        guard case .serving(let process) = lock.withLock({ role }) else { return }
        logger.warning("serving without a standby: the peer is gone", metadata: [
            "export": "\(export.name)", "peer": "\(agent.peer.name)",
        ])
        process.continueWithoutStandby()
    }

    /// A NIC of this node has its link again: the server here may make its replication connection again.
    func localPathRestored() {
        if case .serving(let process) = lock.withLock({ role }) { process.pathRestored() }
    }

    /// What this agent last answered its server's question at the wait limit (logged when it changes).
    private var lastAloneAnswer: ExportRole.AnswerAlone?
    /// An `outdate` request to the peer is under way (one at a time; the server asks again at its next wait check).
    private var outdateAsked = false

    /// This node's server waited for its standby past the wait limit, with
    /// the reply to record `oldestWaiting` the oldest, and asks whether to
    /// answer without it (`ExportRole.answerAlone`); it asks again at each
    /// of its wait checks while it is not told to.
    private func serverAsksToAnswerAlone(waitedMilliseconds: UInt64, oldestWaiting: UInt64) {
        swapQueue.async { [self] in
            let process: ExportProcess? = lock.withLock { if case .serving(let process) = role { process } else { nil } }
            let answer = ExportRole.answerAlone(
                serving: process != nil, peer: agent.peerWatch.reach, agent: agent.peerWatch.agentRuns, now: MonitorRunner.now(),
                waitLimit: .milliseconds(UInt64(agent.configuration.timings.standbyWaitLimitMilliseconds)))
            let (changed, ask) = lock.withLock { () -> (Bool, Bool) in
                defer { lastAloneAnswer = answer }
                let ask = answer == .askPeer && !outdateAsked
                if ask { outdateAsked = true }
                return (lastAloneAnswer != answer, ask)
            }
            let waited = "\(waitedMilliseconds) ms"
            switch answer {
            case .consent:
                logger.warning("the server's replies waited for the standby past the limit: the peer is gone, it answers without it", metadata: [
                    "export": "\(export.name)", "peer": "\(agent.peer.name)", "waited": "\(waited)",
                    "action": "bring \(agent.peer.name) back; it catches up by itself",
                ])
                process?.continueWithoutStandby()
            case .askPeer:
                guard ask, let process else { return }
                DispatchQueue.global().async { [self] in
                    defer { lock.withLock { outdateAsked = false } }
                    let result = Result { try agent.askPeer(.outdate(export: export.name, epoch: currentEpoch)) }
                    switch result {
                    case .success((true, _)):
                        logger.warning("the server's replies waited for the standby past the limit: the peer stood its replica down, the server answers without it", metadata: [
                            "export": "\(export.name)", "peer": "\(agent.peer.name)", "waited": "\(waited)",
                            "action": "check the standby node's disk and agent ('baton status' on \(agent.peer.name), its log); it catches up by itself",
                        ])
                        process.answerAlone(oldestWaiting: oldestWaiting)
                    case .success((false, let why)) where changed:
                        logger.error("the server's replies waited for the standby past the limit: the peer refuses, they wait on", metadata: [
                            "export": "\(export.name)", "peer": "\(agent.peer.name)", "waited": "\(waited)", "why": "\(why)",
                            "action": "none: a swap under way there fences this server or gives up; 'baton status' on both nodes shows it",
                        ])
                    case .failure(let error) where changed:
                        logger.error("the server's replies waited for the standby past the limit: the peer's agent does not answer, they wait on", metadata: [
                            "export": "\(export.name)", "peer": "\(agent.peer.name)", "waited": "\(waited)", "error": "\(error)",
                            "action": "none: asked again while they wait; 'baton diagnose' shows the peer's state",
                        ])
                    case .success, .failure:
                        break
                    }
                }
            case .withhold(let why) where changed:
                logger.error("the server's replies waited for the standby past the limit: they wait on", metadata: [
                    "export": "\(export.name)", "peer": "\(agent.peer.name)", "waited": "\(waited)", "why": "\(why)",
                    "action": "none: asked again while they wait; 'baton status' and 'baton diagnose' show the peer's state",
                ])
            case .withhold:
                break
            }
        }
    }

    /// This node is the isolated one: stop the export's server, so that the
    /// peer (which takes over after the longer takeover delay) is the only one.
    func selfFence() {
        let process: ExportProcess? = lock.withLock {
            guard case .serving(let process) = role else { return nil }
            role = .selfFenced
            return process
        }
        guard let process else { return }
        process.kill()
        // The peer takes the export over: this node's copy is no longer the
        // one to serve at a start that does not hear the peer.
        try? Disk.remove(standbyOutdatedMarker)
        try? Disk.remove(servingMarker)
        try? Disk.syncDirectory(directory)
        logger.critical("export server stopped: this node is isolated", metadata: [
            "export": "\(export.name)", "pid": "\(process.pid)", "epoch": "\(currentEpoch)",
        ])
    }

    /// The peer is heard again after this node fenced itself: the export is
    /// served where the peer says (it took over: this node becomes the
    /// standby), or here again if the peer does not serve it.
    func peerBack(peerServes: Bool?) {
        if case .waitingForPeer = lock.withLock({ role }), let peerServes { return decideAfterWaiting(peerServes: peerServes) }
        let wasFenced = lock.withLock { () -> Bool in
            guard case .selfFenced = role else { return false }
            role = .starting
            return true
        }
        guard wasFenced else { return }
        let rejoin = ExportRole.rejoin(peerServes: peerServes)
        if case .serve = rejoin {
            logger.warning("the peer does not serve the export: serving it here again", metadata: ["export": "\(export.name)"])
        }
        take(rejoin)
    }

    // MARK: - Fencing (asked by the peer's agent)

    /// Kills this node's server of the export if its epoch is `epoch` or
    /// older, waits for its exit, and becomes the standby.
    /// `handOver`: a planned swap; the server first drains (no more
    /// mutations, the standby acknowledges every record), then exits.
    func fence(epoch: UInt64, handOver: Bool = false) -> (Bool, String) {
        let ownEpoch = currentEpoch
        let (decision, process) = lock.withLock { () -> (ExportRole.Fence, ExportProcess?) in
            let serving: ExportProcess? = if case .serving(let process) = role { process } else { nil }
            let decision = ExportRole.fence(serving: serving != nil, ownEpoch: ownEpoch, asked: epoch, handOver: handOver)
            if case .end = decision { role = .starting }
            return (decision, serving)
        }
        switch decision {
        case .refuseNewer(let ownEpoch):
            return (false, "\(agent.me.name) serves \(export.name) at epoch \(ownEpoch), newer than \(epoch)")
        case .nothingRuns:
            return (true, "no server of \(export.name) runs on \(agent.me.name)")
        case .end:
            break
        }
        guard let process else { preconditionFailure("a fence of a server that does not run: \(decision)") }
        if handOver { process.handOver() } else { process.kill() }
        logger.warning(handOver ? "export server handed over at the peer's request" : "export server fenced at the peer's request", metadata: [
            "export": "\(export.name)", "pid": "\(process.pid)", "epoch": "\(ownEpoch)",
            "cause": "\(handOver ? "planned" : "the peer's monitor declared the server failed")",
        ])
        // A peer that took over now, its monitor not yet stood down, would
        // serve without the writes the server answered alone.
        if case .serve = ExportRole.afterFence(handOver: handOver, answeredAlone: Disk.exists(standbyOutdatedMarker)) {
            logger.critical("the peer's replica lacks writes this server answered without it: serving the export here again instead", metadata: [
                "export": "\(export.name)", "node": "\(agent.me.name)", "peer": "\(agent.peer.name)", "epoch": "\(ownEpoch)",
                "action": .string("none if the server starts again here; if this node cannot serve it, 'baton force-serve "
                    + "\(export.name) --node \(agent.peer.name)' serves the peer's copy and loses those writes"),
            ])
            Thread.detachNewThread { [self] in
                do {
                    try startServing(aloneFromStart: true)
                } catch {
                    logger.critical("the export server did not start again", metadata: [
                        "export": "\(export.name)", "error": "\(error)", "action": "see the log above, then restart this agent",
                    ])
                }
            }
            return (false, "\(agent.me.name) answered writes of \(export.name) without its standby on \(agent.peer.name), "
                + "which lacks them: its server starts again there instead")
        }
        // The peer waits for this answer to promote: open the replica after it.
        Thread.detachNewThread { [self] in
            do {
                try startStandby()
            } catch {
                logger.critical("fenced, but the standby replica did not open", metadata: [
                    "export": "\(export.name)", "error": "\(error)", "action": "check \(directory), then restart this agent",
                ])
            }
        }
        return (true, "fenced")
    }

    /// This node's agent did not run for `gap`. A standby refused and
    /// acknowledged nothing meanwhile: if the gap reaches the server's wait
    /// limit, the server may have answered writes alone that this replica
    /// lacks, so its monitor stops until the server's next session says
    /// replies wait again (`repliesWait`), and a swap under way gives up.
    func agentResumed(after gap: TimeSpan) {
        swapQueue.async { [self] in swapEvent(.agentResumed(gap: gap)) }
        let stopped = lock.withLock { () -> Bool in
            let actions = replicaWatch.handle(.agentResumed(gap: gap, limit: swapTimings.outdatingGap))
            carryOutLocked(actions)
            return actions.contains(.stopMonitor)
        }
        guard stopped else { return }
        logger.warning("this agent did not run for a while: the monitor waits for the server's next replication session", metadata: [
            "export": "\(export.name)", "gap": "\(gap)",
        ])
    }

    /// The peer's server of `epoch` asks to answer without this replica
    /// (`ExportRole.outdate`): decided under the same lock that a swap's
    /// begin takes, so either the swap runs and the server keeps waiting, or
    /// the replica has stood down and no swap begins until it is caught up.
    func outdate(epoch: UInt64) -> (Bool, String) {
        let decision = lock.withLock { () -> ExportRole.Outdate in
            let swapping = switch role {
            case .swapping, .handingOver: true
            case .starting, .serving, .standby, .selfFenced, .waitingForPeer: false
            }
            // The replica's epoch is in memory: its disk may be the one that hangs.
            let ownEpoch = if case .standby(let store, _) = role { store.epoch } else { currentEpoch }
            let decision = ExportRole.outdate(swapUnderWay: swapping, ownEpoch: ownEpoch, asked: epoch)
            if decision == .standDown { carryOutLocked(replicaWatch.handle(.stoodDown)) }
            return decision
        }
        switch decision {
        case .standDown:
            logger.warning("the server on the peer answers without this replica: the monitor waits for its next replication session", metadata: [
                "export": "\(export.name)", "peer": "\(agent.peer.name)", "epoch": "\(epoch)",
                "action": "check this node's disk and agent log: the replica did not acknowledge for the wait limit",
            ])
            return (true, "\(export.name) on \(agent.me.name): the replica stood down; it catches up in the server's next session")
        case .refuse(let why):
            logger.notice("the server on the peer may not answer without this replica", metadata: [
                "export": "\(export.name)", "peer": "\(agent.peer.name)", "epoch": "\(epoch)", "why": "\(why)",
            ])
            return (false, "\(export.name) on \(agent.me.name): \(why)")
        }
    }

    // MARK: - The swap (DESIGN.md §5), on the standby node

    /// Why a swap runs.
    enum SwapReason: CustomStringConvertible {
        case failed(Monitor.FailureReason)
        case planned

        var description: String {
            switch self {
            case .failed(let reason): "\(reason)"
            case .planned: "planned migration"
            }
        }

        /// A word per kind of reason, for metrics (bounded: one series each).
        var cause: String {
            switch self {
            case .failed(.probesMissed): "probes_missed"
            case .failed(.wrongResponses): "wrong_responses"
            case .failed(.heartbeatGap): "heartbeat_gap"
            case .failed(.olderEpochSeen): "older_epoch_seen"
            case .planned: "planned"
            }
        }
    }

    /// How long each step of a swap took, for its log line.
    private struct SwapTimes {
        private(set) var steps: [(String, Duration)] = []
        private var last = ContinuousClock.now

        mutating func step(_ name: String) {
            let now = ContinuousClock.now
            steps.append((name, now - last))
            last = now
        }

        static func milliseconds(_ duration: Duration) -> String {
            let (seconds, attoseconds) = duration.components
            return String(format: "%.1fms", Double(seconds) * 1000 + Double(attoseconds) / 1e15)
        }

        var description: String { steps.map { "\($0.0) \(Self.milliseconds($0.1))" }.joined(separator: ", ") }
    }

    /// A swap under way: the pure `Swap` decides, `performSwap` carries its
    /// actions out. Confined to `swapQueue`; the steps that block (asking
    /// the peer, starting and promoting a process) run off it and come back
    /// as events.
    private struct RunningSwap {
        var machine: Swap
        let reason: SwapReason
        let store: ExportStore
        let monitor: MonitorRunner?
        /// Tells the results of blocking steps of this swap from a later one's.
        let number: Int
        let started = ContinuousClock.now
        var pauseBegan: ContinuousClock.Instant?
        var times = SwapTimes()
        var next: ExportProcess?
        var abandonNextWhenReady = false
        var storeClosed = false
        /// Fences asked so far, for the log.
        var fencesAsked = 0
        let ticker: DispatchSourceTimer
        let done: (@Sendable (Bool) -> Void)?
    }

    private let swapQueue: DispatchQueue
    private var runningSwap: RunningSwap?
    private var swapsBegun = 0

    /// How often a running swap hears the time and the peer's reach.
    static let swapTick = DispatchTimeInterval.milliseconds(20)

    private var swapTimings: SwapTimings {
        SwapTimings(fenceRetryInterval: SwapTimings.defaults.fenceRetryInterval,
                    maxFenceAttempts: SwapTimings.defaults.maxFenceAttempts,
                    takeoverDelay: agent.configuration.timings.diagnosisTimings.takeoverDelay,
                    maxServerStarts: SwapTimings.defaults.maxServerStarts,
                    standbyWaitLimit: .milliseconds(UInt64(agent.configuration.timings.standbyWaitLimitMilliseconds)))
    }

    /// Begins a swap of the standby replica here, unless one runs or this
    /// node is not the standby; `done` hears whether the export is served here after it.
    private func beginSwap(_ reason: SwapReason, done: (@Sendable (Bool) -> Void)? = nil) {
        swapQueue.async { [self] in
            guard runningSwap == nil, let (store, monitor) = lock.withLock({ () -> (ExportStore, MonitorRunner?)? in
                guard case .standby(let store, let monitor) = role else { return nil }
                // A replica that stood down (`outdate`) may lack what the server answered alone.
                if case .failed = reason, monitor == nil { return nil }
                carryOutLocked(replicaWatch.handle(.swapBegan))
                // A planned swap takes the old server's last records while it hands over.
                role = .handingOver(store)
                return (store, monitor)
            }) else { done?(false); return }
            let kind: Swap.Kind = if case .failed(let failure) = reason { .failover(failure) } else { .migration }
            let ticker = DispatchSource.makeTimerSource(queue: swapQueue)
            ticker.schedule(deadline: .now() + Self.swapTick, repeating: Self.swapTick)
            ticker.setEventHandler { [self] in swapEvent(.tick(peer: agent.peerWatch.reach)) }
            swapsBegun += 1
            runningSwap = RunningSwap(machine: Swap(kind: kind, oldEpoch: store.epoch, timings: swapTimings), reason: reason,
                                      store: store, monitor: monitor, number: swapsBegun, ticker: ticker, done: done)
            logger.warning("swap begins", metadata: ["export": "\(export.name)", "epoch": "\(store.epoch)", "reason": "\(reason)"])
            ticker.resume()
            swapEvent(.begin)
        }
    }

    /// Feeds `event` to the running swap and carries out its actions; local
    /// steps answer at once, and their answers are fed in turn.
    private func swapEvent(_ event: Swap.Event) {
        dispatchPrecondition(condition: .onQueue(swapQueue))
        var events = [event]
        while !events.isEmpty, var swap = runningSwap {
            let actions = swap.machine.handle(events.removeFirst(), at: MonitorRunner.now())
            runningSwap = swap
            for action in actions {
                if let answer = performSwap(action) { events.append(answer) }
            }
        }
    }

    /// Runs `step` off the swap queue, then feeds its answer to the swap it belongs to.
    private func offSwapQueue(_ step: @escaping @Sendable () -> Swap.Event, then: (@Sendable (Swap.Event) -> Void)? = nil) {
        let number = runningSwap?.number
        DispatchQueue.global().async { [self] in
            let answer = step()
            swapQueue.async { [self] in
                guard runningSwap?.number == number else { return }
                then?(answer)
                swapEvent(answer)
            }
        }
    }

    /// Carries out one action of the swap; a local step returns its answer.
    private func performSwap(_ action: Swap.Action) -> Swap.Event? {
        guard var swap = runningSwap else { return nil }
        defer { if runningSwap != nil { runningSwap = swap } }
        let store = swap.store
        let epoch = swap.machine.oldEpoch
        switch action {
        case .stopMonitor:
            // After a failure it has stopped already.
            swap.monitor?.stop()
        case .refuseOldRecords:
            stopTakingRecords()
        case .diagnosePeer:
            agent.peerWatch.rediagnose()
        case .startNextServer:
            // Bound to its address but answering nobody until its promotion:
            // the process start is out of the pause.
            let number = swap.number
            DispatchQueue.global().async { [self] in
                let started = Result { try makeServer(awaitPromotion: true) }
                swapQueue.async { [self] in
                    guard case .success(let process) = started else {
                        if case .failure(let error) = started {
                            logger.error("the next server did not start", metadata: ["export": "\(export.name)", "error": "\(error)"])
                        }
                        if runningSwap?.number == number { swapEvent(.nextServerFailed) }
                        return
                    }
                    guard runningSwap?.number == number, runningSwap?.abandonNextWhenReady == false else {
                        return DispatchQueue.global().async { process.abandon() }
                    }
                    runningSwap?.next = process
                    if case .migration = runningSwap?.machine.kind { runningSwap?.times.step("start") }
                    swapEvent(.nextServerReady)
                }
            }
        case .fence(let fenceEpoch, let handOver):
            if swap.pauseBegan == nil { swap.pauseBegan = .now }
            // A planned swap asks the old server to hand over first: in
            // async mode too, the standby gets every record it answered.
            let request: AgentRequest = handOver ? .handOver(export: export.name, epoch: fenceEpoch)
                : .fence(export: export.name, epoch: fenceEpoch)
            swap.fencesAsked += 1
            let first = swap.fencesAsked == 1
            offSwapQueue({ [self] in
                do {
                    let (ok, text) = try agent.askPeer(request)
                    if !ok { logger.error("fence refused; no swap", metadata: ["export": "\(export.name)", "answer": "\(text)"]) }
                    return .fenceAnswered(fenced: ok)
                } catch {
                    if first {
                        logger.error("the peer's agent does not answer the fence: waiting for the diagnosis", metadata: [
                            "export": "\(export.name)", "peer": "\(agent.peer.name)", "error": "\(error)",
                        ])
                    }
                    return .fenceUnanswered
                }
            })
        case .abandonNextServer:
            if let next = swap.next {
                swap.next = nil
                DispatchQueue.global().async { next.abandon() }
            } else {
                swap.abandonNextWhenReady = true
            }
        case .writeWarmCheckpoint:
            swap.times.step("fence")
            // The new server starts from it without replaying the journal.
            do {
                try store.writeWarmCheckpoint()
                swap.times.step("checkpoint")
                return .checkpointWritten
            } catch {
                logger.error("the warm checkpoint was not written: the new server replays the journal", metadata: [
                    "export": "\(export.name)", "error": "\(error)",
                ])
                return .checkpointFailed
            }
        case .persistEpoch(let newEpoch):
            // The new epoch is on disk before anything of it is announced.
            do {
                try store.persistEpoch(newEpoch)
                try Disk.writeAtomically(Array("serving\n".utf8), to: servingMarker, directory: directory)
                swap.times.step("epoch")
                return .epochPersisted
            } catch {
                logger.critical("the new epoch could not be made durable", metadata: [
                    "export": "\(export.name)", "epoch": "\(newEpoch)", "error": "\(error)",
                    "action": "fix the disk under \(directory); the monitor declares the failure again and the swap is retried",
                ])
                return .epochPersistFailed
            }
        case .promote:
            guard let process = swap.next else { preconditionFailure("promote without a next server") }
            // One owner (DESIGN.md §4.7): the replica gives the directory up to the new server.
            if !swap.storeClosed { store.close() }
            swap.storeClosed = true
            swap.next = nil
            offSwapQueue({
                do {
                    // The old server is fenced (or its node gone): the new one answers
                    // at once, without waiting for the old node's replica to catch up.
                    try process.promote(alone: true)
                    return .promoted
                } catch {
                    return .promotionFailed
                }
            }, then: { [self] answer in
                if answer == .promoted {
                    lock.withLock { role = .serving(process) }
                    runningSwap?.times.step("open")
                } else {
                    logger.error("the next server did not take the go-ahead", metadata: ["export": "\(export.name)"])
                }
            })
        case .returnToStandby(let watch):
            if let next = swap.next {
                swap.next = nil
                DispatchQueue.global().async { next.abandon() }
            }
            do {
                // A failed promotion has let the replica go: open it again.
                if swap.storeClosed { try startStandby() } else { lock.withLock { role = .standby(store, nil) } }
                lock.withLock { carryOutLocked(replicaWatch.handle(.swapEnded(watch: watch))) }
            } catch {
                logger.critical("no swap, and the standby replica did not open again", metadata: [
                    "export": "\(export.name)", "error": "\(error)", "action": "check \(directory), then restart this agent",
                ])
            }
        case .raiseAlarm(.fenceUnconfirmed):
            logger.warning("the peer is gone: taking the export over without its fence", metadata: [
                "export": "\(export.name)", "peer": "\(agent.peer.name)",
            ])
        case .raiseAlarm(.checkpointNotWritten):
            break  // `writeWarmCheckpoint` said why.
        case .raiseAlarm(.nextServerRestarted):
            logger.warning("starting the next server again", metadata: ["export": "\(export.name)", "epoch": "\(epoch + 1)"])
        case .completed(let newEpoch):
            finishSwap(&swap, servedHere: true)
            lock.withLock { carryOutLocked(replicaWatch.handle(.swapEnded(watch: false))) }
            let pauseBegan = swap.pauseBegan ?? swap.started
            if case .serving(let process) = lock.withLock({ role }) {
                process.whenFirstWelcome { [logger, export] in
                    logger.info("swap: first client back", metadata: [
                        "export": "\(export.name)", "epoch": "\(newEpoch)",
                        "afterPauseBegan": "\(SwapTimes.milliseconds(ContinuousClock.now - pauseBegan))",
                    ])
                }
            }
            let at = ISO8601DateFormatter().string(from: Date())
            lock.withLock { lastFailover = (at, "\(swap.reason)") }
            AgentMetrics.swapDone(export: export.name, cause: swap.reason.cause)
            logger.warning("swap done: the export is served here", metadata: [
                "export": "\(export.name)", "epoch": "\(newEpoch)", "cause": "\(swap.reason.cause)", "reason": "\(swap.reason)",
                "duration": "\(SwapTimes.milliseconds(ContinuousClock.now - swap.started))",
                "pause": "\(SwapTimes.milliseconds(ContinuousClock.now - pauseBegan))", "steps": "\(swap.times.description)",
            ])
        case .failed(let failure):
            finishSwap(&swap, servedHere: false)
            logSwapFailure(failure, swap: swap)
        }
        return nil
    }

    private func finishSwap(_ swap: inout RunningSwap, servedHere: Bool) {
        swap.ticker.cancel()
        runningSwap = nil
        swap.done?(servedHere)
    }

    private func logSwapFailure(_ failure: Swap.Failure, swap: RunningSwap) {
        var metadata: Logger.Metadata = ["export": "\(export.name)", "node": "\(agent.me.name)", "peer": "\(agent.peer.name)",
                                         "epoch": "\(swap.machine.oldEpoch)", "reason": "\(swap.reason)"]
        switch failure {
        case .selfIsolated:
            logger.critical("this node is the isolated one: no swap", metadata: metadata.merging([
                "action": "check this node's NICs and cables; the monitor watches again once the server's replication session is back",
            ]) { $1 })
        case .fenceRefused:
            logger.error("no swap: the peer refused the fence", metadata: metadata)
        case .fenceUnanswered:
            metadata["attempts"] = "\(swap.fencesAsked)"
            logger.error("no swap: the peer is heard, but its agent answered none of the fences; the monitor watches again", metadata:
                metadata.merging(["action": "check the agent on \(agent.peer.name) ('baton status', its log)"]) { $1 })
        case .replicaMayBeOutdated:
            logger.error("no swap: this agent did not run for longer than the server's standby wait limit, and the server may have answered writes this replica lacks", metadata:
                metadata.merging(["action": "none: the monitor watches again once the server's replication session has caught this replica up"]) { $1 })
        case .epochNotPersisted, .serverWouldNotStart:
            logger.critical("swap failed: the export is not served here", metadata: metadata.merging([
                "failure": "\(failure)",
                "action": "see the log above; the monitor declares the failure again and retries, or restart this agent",
            ]) { $1 })
        }
    }

    /// From now on, records from the old server are refused. Under
    /// `applyLock`: a record being applied finishes first, so the warm
    /// checkpoint of the swap sees the journal at rest.
    private func stopTakingRecords() {
        applyLock.withLock { lock.withLock {
            role = .swapping
            replicaChannel?.close(promise: nil)
            replicaChannel = nil
        } }
    }

    /// A planned swap (`baton migrate`). On the standby node: run the swap
    /// now, as after a failure but without waiting to detect one. On the
    /// serving node: ask the peer to.
    func migrate() -> (Bool, String) {
        switch lock.withLock({ role }) {
        case .standby(_, nil):
            // Not yet in step: promoting this replica would lose what it has not received.
            return (false, "the standby of \(export.name) on \(agent.me.name) is catching up; try again once it is in step")
        case .standby:
            let started = ContinuousClock.now
            let finished = DispatchSemaphore(value: 0)
            let servedHere = NIOLockedValueBox(false)
            beginSwap(.planned) { served in
                servedHere.withLockedValue { $0 = served }
                finished.signal()
            }
            finished.wait()
            guard servedHere.withLockedValue({ $0 }) else {
                return (false, "the swap of \(export.name) to \(agent.me.name) did not complete; see the agent's log")
            }
            return (true, "\(export.name) is served on \(agent.me.name) now (swap took \(ContinuousClock.now - started))")
        case .serving:
            do {
                let (ok, text) = try agent.askPeer(.migrate(export: export.name))
                return (ok, text)
            } catch {
                return (false, "the peer \(agent.peer.name) does not answer: \(error)")
            }
        case .starting, .swapping, .handingOver:
            return (false, "\(export.name) is between roles on \(agent.me.name); try again")
        case .selfFenced:
            return (false, "\(agent.me.name) is isolated and has stopped serving \(export.name); repair its network first")
        case .waitingForPeer(let why):
            return (false, "\(agent.me.name) waits for \(agent.peer.name) before it serves \(export.name): \(why)")
        }
    }

    // MARK: - Replica sessions (from the peer's export server)

    /// A swap here may take the export over: the server's replies must not
    /// stop waiting for this replica meanwhile (see `Refusal.swapUnderWay`).
    private var swapUnderWayRefusal: Message {
        .refused(.swapUnderWay, detail: "\(agent.me.name) runs a swap of \(export.name); wait for it")
    }

    /// A server of `epoch` is older than this node's copy: a swap it did not see replaced it.
    private func supersededRefusal(_ epoch: UInt64, replicaEpoch: UInt64? = nil) -> Message {
        .refused(.staleEpoch, detail: "epoch \(epoch) is older than \(agent.me.name)'s \(replicaEpoch ?? currentEpoch) of \(export.name)")
    }

    func replicaHello(epoch: UInt64, channel: Channel) -> Message {
        if case .serving = lock.withLock({ role }), epoch > currentEpoch {
            // A server of a newer epoch runs on the peer: this node's server
            // was left behind by a swap it did not see (its agent was stalled
            // or cut off). It can acknowledge nothing; stop it, become the standby.
            logger.warning("a newer server of the export exists: stopping the old one here", metadata: [
                "export": "\(export.name)", "epoch": "\(currentEpoch)", "newerEpoch": "\(epoch)",
            ])
            Thread.detachNewThread { [self] in _ = fence(epoch: epoch) }
            return .refused(.notActive, detail: "\(agent.me.name) is stepping down for epoch \(epoch); retry")
        }
        return lock.withLock {
            if case .swapping = role { return swapUnderWayRefusal }
            if case .handingOver = role { return swapUnderWayRefusal }
            if case .serving = role, epoch < currentEpoch { return supersededRefusal(epoch) }
            guard case .standby(let store, _) = role else {
                return .refused(.notActive, detail: "\(agent.me.name) is not the standby of \(export.name)")
            }
            guard epoch >= store.epoch else { return supersededRefusal(epoch, replicaEpoch: store.epoch) }
            do {
                // This replica may promote only to a newer epoch than the server's (one server per epoch).
                if epoch > store.epoch { try store.persistEpoch(epoch) }
            } catch {
                return .refused(.notActive, detail: "cannot record epoch \(epoch): \(error)")
            }
            replicaChannel?.close(promise: nil)
            replicaChannel = channel
            copy = nil
            sharedUpTo = nil
            let actions = replicaWatch.handle(.sessionBegan)
            carryOutLocked(actions)
            if actions.contains(.stopMonitor) {
                logger.info("monitor paused while the server's replication session starts", metadata: ["export": "\(export.name)"])
            }
            return .replicaPosition(store.journalHistory)
        }
    }

    /// The server asks which files this replica's records after `sequence`
    /// (the last record both journals share) changed: those it will copy,
    /// with its own. The records after `sequence` are dropped by the copy.
    func filesChanged(after sequence: UInt64, channel: Channel) -> Message {
        guard let store = replicaStore(channel) else { return .refused(.notActive, detail: "not the standby") }
        let position = store.appliedSequence
        let files = store.filesChanged(after: sequence).flatMap { $0.count <= Message.maxChangedFiles ? $0.sorted() : nil }
        lock.withLock { sharedUpTo = sequence }
        logger.info("standby catching up", metadata: [
            "export": "\(export.name)", "sequence": "\(position)", "sharedUpTo": "\(sequence)",
            "recordsToDrop": "\(position - min(position, sequence))",
            "changedFiles": "\(files.map { "\($0.count)" } ?? "unknown: a full copy follows")",
        ])
        return .filesChanged(files)
    }

    /// The replica's store for a session of `channel`, if it is still the current one.
    private func replicaStore(_ channel: Channel) -> ExportStore? {
        lock.withLock {
            guard replicaChannel === channel else { return nil }
            switch role {
            case .standby(let store, _), .handingOver(let store): return store
            case .starting, .serving, .swapping, .selfFenced, .waitingForPeer: return nil
            }
        }
    }

    func replicate(_ record: JournalRecord, channel: Channel) -> Message {
        // Under `applyLock`: once a swap has begun, no record is half applied.
        let answer = applyLock.withLock { () -> Message in
            guard let store = replicaStore(channel) else {
                switch lock.withLock({ role }) {
                case .swapping: return swapUnderWayRefusal
                case .serving where record.epoch < currentEpoch: return supersededRefusal(record.epoch)
                default:
                    // An older session of this server, or a role between two: it starts a new session.
                    return .refused(.notActive, detail: "\(agent.me.name) no longer takes records for \(export.name) on this session")
                }
            }
            do {
                _ = try store.applyReplicated(record)
                return .replicated(sequence: record.sequence)
            } catch let error as ReplicationError {
                logger.warning("replicated record refused", metadata: ["export": "\(export.name)", "error": "\(error)"])
                if case .staleEpoch = error { return .refused(.staleEpoch, detail: "\(error)") }
                return .refused(.replicaFailed, detail: "\(error)")
            } catch {
                logger.critical("the standby replica cannot keep records: the server goes on without it", metadata: [
                    "export": "\(export.name)", "node": "\(agent.me.name)", "error": "\(error)",
                    "action": "fix the disk under \(directory); the replica catches up once it can",
                ])
                return .refused(.replicaFailed, detail: "\(agent.me.name): \(error)")
            }
        }
        if case .replicated(let sequence) = answer { lock.withLock { carryOutLocked(replicaWatch.handle(.applied(sequence))) } }
        return answer
    }

    /// The server's replies wait for this replica from now on; it answered
    /// nothing past `sequence` without it.
    func repliesWait(through sequence: UInt64, channel: Channel) {
        guard let store = replicaStore(channel) else { return }
        lock.withLock { carryOutLocked(replicaWatch.handle(.repliesWait(through: sequence, applied: store.appliedSequence))) }
    }

    func replicaSync(_ sequence: UInt64, channel: Channel) -> Message {
        guard let store = replicaStore(channel) else { return .refused(.notActive, detail: "not the standby") }
        do {
            // Under `applyLock`: a record being applied may switch the journal to a new segment.
            try applyLock.withLock { try store.sync() }
            return .replicaSynced(sequence: sequence)
        } catch {
            logger.critical("the standby replica cannot make records durable: the server goes on without it", metadata: [
                "export": "\(export.name)", "node": "\(agent.me.name)", "error": "\(error)",
                "action": "fix the disk under \(directory); the replica catches up once it can",
            ])
            return .refused(.replicaFailed, detail: "\(agent.me.name): \(error)")
        }
    }

    /// A copy from the server begins.
    func copyBegins(partial: Bool, expectedBytes: UInt64) {
        lock.withLock { copy = CopyProgress(partial: partial, expectedBytes: expectedBytes) }
        logger.info("\(partial ? "partial" : "full") copy arriving", metadata: [
            "export": "\(export.name)", "expectedBytes": "\(expectedBytes)",
        ])
    }

    /// A piece of a copy arrived: counted for `baton status`, logged every 256 MiB.
    func copyProgress(_ bytes: Int) {
        guard let progress = lock.withLock({ () -> CopyProgress? in
            copy?.receivedBytes += bytes
            return copy
        }) else { return }
        let total = progress.receivedBytes
        if total / (256 << 20) != (total - bytes) / (256 << 20) {
            logger.info("\(progress.kind) copy arriving", metadata: [
                "export": "\(export.name)", "receivedBytes": "\(total)", "expectedBytes": "\(progress.expectedBytes)",
            ])
        }
    }

    /// A copy arrived (in `incoming`): it replaces the replica's namespace,
    /// journal and epoch, and its data files: all of them (full), or those
    /// it holds, the others being the same on both nodes (partial; the store
    /// deletes the data files of inodes the new namespace does not have).
    func installSnapshot(from incoming: String, partial: Bool, sequence: UInt64, epoch: UInt64, channel: Channel) -> Message {
        guard let old = replicaStore(channel) else { return .refused(.notActive, detail: "not the standby") }
        // A monitor of the replica being replaced watches with stale knowledge: stop it.
        lock.withLock { carryOutLocked(replicaWatch.handle(.copyInstalling)) }
        let kind = partial ? "partial" : "full"
        do {
            try CatchUpCopy.install(from: incoming, into: directory, partial: partial, epoch: epoch)
            try? FileManager.default.removeItem(atPath: incoming)
            // One owner (DESIGN.md §4.7), this process included: the old replica lets go first.
            old.close()
            let store = try openReplicaStore()
            let (received, dropped) = lock.withLock { () -> (Int, UInt64?) in
                role = .standby(store, nil)
                defer { copy = nil }
                let received = copy?.receivedBytes ?? 0
                let dropped = partial ? old.appliedSequence - min(old.appliedSequence, sharedUpTo ?? 0) : nil
                lastCatchUp = ExportStatus.CatchUpDone(kind: kind, sequence: Int(sequence), receivedBytes: received,
                                                       droppedRecords: dropped.map { Int($0) })
                return (received, dropped)
            }
            logger.info("\(kind) copy installed", metadata: [
                "export": "\(export.name)", "sequence": "\(sequence)", "epoch": "\(epoch)", "receivedBytes": "\(received)",
                "droppedRecords": "\(dropped.map(String.init) ?? "all")",
            ])
            return .replicated(sequence: sequence)
        } catch {
            logger.error("\(kind) copy could not be installed", metadata: ["export": "\(export.name)", "error": "\(error)"])
            return .refused(.notActive, detail: "\(error)")
        }
    }

    /// Carries out `ReplicaWatch`'s actions, under `lock`, in the standby role.
    private func carryOutLocked(_ actions: [ReplicaWatch.Action]) {
        for action in actions {
            switch action {
            case .startMonitor:
                guard case .standby(let store, nil) = role else { continue }
                let monitor = MonitorRunner(
                    exportName: export.name, server: peerMonitorAddresses, epoch: store.epoch, authenticator: agent.authenticator,
                    timings: agent.monitorTimings, group: agent.monitorGroup, tls: agent.tls, logger: logger,
                    onFailure: { [self] reason in
                        self.beginSwap(.failed(reason))
                    },
                    onStandDown: { _ in },
                    onServerAnswersAlone: { [self] in monitorSawTheServerAnswerAlone() })
                role = .standby(store, monitor)
            case .stopMonitor:
                guard case .standby(let store, let monitor?) = role else { continue }
                monitor.stop()
                role = .standby(store, nil)
            case .endSession:
                replicaChannel?.close(promise: nil)
                replicaChannel = nil
            }
        }
    }

    /// The monitor stopped itself: the server answers without this replica.
    private func monitorSawTheServerAnswerAlone() {
        lock.withLock {
            // Not a monitor started since, by a `repliesWait`.
            guard case .standby(_, let monitor?) = role, monitor.isStopped else { return }
            carryOutLocked(replicaWatch.handle(.serverAnswersAlone))
        }
    }

    // MARK: - Status

    func status() -> ExportStatus {
        lock.withLock {
            var entry = ExportStatus(name: export.name, node: agent.me.name, role: .starting, epoch: Int(currentEpoch))
            switch role {
            case .starting: entry.role = .starting
            case .selfFenced: entry.role = .selfFenced
            case .waitingForPeer(let why):
                entry.role = .waitingForPeer
                entry.waiting = .init(node: agent.me.name, why: why, force: "baton force-serve \(export.name) --node \(agent.me.name)")
            case .swapping: entry.role = .swapping
            case .handingOver: entry.role = .takingOver
            case .serving(let process):
                entry.role = .server
                entry.server = .init(node: agent.me.name, address: clientAddress.description, pid: Int(process.pid))
                entry.monitor = .init(node: agent.peer.name)
                // The server answers without its standby (the peer gone, its disk failed, just after a swap).
                if Disk.exists(standbyOutdatedMarker) { entry.answeringAlone = true }
            case .standby(let store, let monitor):
                entry.role = .standby
                entry.sequence = Int(store.appliedSequence)
                entry.monitor = .init(node: agent.me.name, watching: monitor != nil)
                if let copy {
                    entry.catchingUp = .init(kind: copy.kind, receivedBytes: copy.receivedBytes, expectedBytes: Int(copy.expectedBytes))
                }
                entry.lastCatchUp = lastCatchUp
                if let rtt = monitor?.lastRoundTrip { entry.probeRttMs = Double(rtt.nanoseconds) / 1e6 }
                if let position = monitor?.serverSequence {
                    entry.serverSequence = Int(position)
                    entry.lag = Int(position) - Int(store.appliedSequence)
                }
            }
            entry.lastFailover = lastFailover.map { .init(at: $0.at, reason: $0.reason) }
            return entry
        }
    }
}
