import ArgumentParser
import BatonCore
import BatonRuntime
import BatonServer
import Dispatch
import Foundation
import Logging

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve one export from a data directory (journal, checkpoint, file data).")

    @Option(help: "The export's name; clients mount NAME@HOST:PORT.")
    var export: String

    @Option(help: "The export's data directory on this node (created if missing).")
    var data: String

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free port).")
    var listen: NodeAddress

    @Option(name: .customLong("path-address"), help: ArgumentHelp(
        "This node's address on another network path (repeatable): both listeners listen there too, on the same ports.",
        discussion: "Clients connect there when the first path is down, and the second subflow of a multipath (MPTCP) "
            + "connection joins there."))
    var pathAddresses: [String] = []

    @Option(name: .customLong("export-address"), help: ArgumentHelp(
        "HOST:PORT where clients may find this export (repeatable): each node's address on each path.",
        discussion: "Told to every client after its welcome, so that a mount naming one address finds the export "
            + "on the other node and over the other path too."))
    var exportAddresses: [NodeAddress] = []

    @Flag(help: ArgumentHelp(
        "This node has two network paths: listen and replicate with MPTCP, and tell clients to connect with it.",
        discussion: "A connection then has a subflow on each path and rides through a NIC or switch fault (README "
            + "\"Redundant paths\"); the agent passes it when the node lists two paths."))
    var multipath = false

    @Option(help: ArgumentHelp(
        "Address for the monitor's challenges and heartbeats, HOST:PORT (port 0 picks a free port); needs --secret-file.",
        discussion: "They are answered on a thread of their own, which clients' requests cannot hold up. Without it no "
            + "monitor can watch this server."))
    var monitorListen: NodeAddress?

    @Option(help: ArgumentHelp(
        "Serve Prometheus metrics (HTTP GET /metrics) at HOST:PORT (port 0 picks a free port).",
        discussion: "Requests, bytes and latency by operation, journal bytes, checkpoint age, clients, the standby's lag. "
            + "The agent starts its servers with a loopback address and serves their series on its own page."))
    var metricsListen: NodeAddress?

    @Option(help: "Journal bytes after which a checkpoint is written and older journal deleted.")
    var checkpointBytes: Int = 64 << 20

    @Option(help: "The cluster's shared secret (answers the monitor's challenges, authenticates to the standby).")
    var secretFile: String?

    @Option(help: "HOST:PORT of the peer's agent, which keeps the standby replica (started by 'baton agent').")
    var standby: NodeAddress?

    @Option(name: .customLong("standby-path-address"),
            help: "HOST:PORT of the peer's agent on another network path: a replication connection that cannot be made to --standby is made there.")
    var standbyPathAddresses: [NodeAddress] = []

    @Option(help: "This node's certificate (PEM, from `baton cert issue --role node`): TLS on every listener and on replication.")
    var tlsCert: String?

    @Option(name: .customLong("client"), help: ArgumentHelp(
        "A client that may mount and write, by its certificate's name or a pattern with * and ? (repeatable; TLS only).",
        discussion: "With neither --client nor --read-only-client every client certificate of the CA may mount and write."))
    var clients: [String] = []

    @Option(name: .customLong("read-only-client"), help: "A client that may mount and only read (repeatable; TLS only).")
    var readOnlyClients: [String] = []

    @Option(help: ArgumentHelp(
        "Whose identity the server does not trust: root (root acts as --anonuid, as NFS's root_squash), all, or none.",
        discussion: "A squashed caller's permissions are checked by the server, and what it creates belongs to --anonuid and --anongid."))
    var squash = "root"

    @Option(help: "The uid a squashed caller acts as (NFS's anonuid; 65534 is nobody).")
    var anonuid: UInt32 = Credentials.nobody.uid

    @Option(help: "The gid a squashed caller acts as (NFS's anongid).")
    var anongid: UInt32 = Credentials.nobody.gid

    @Option(name: .customLong("lock-lease-ms"), help: ArgumentHelp(
        "How long a client session holding locks may have no connection before its locks are released (ms).",
        discussion: "A client that comes back in time (after a failover, a network blip) keeps them."))
    var lockLeaseMilliseconds = ExportConfiguration.defaultLockLeaseMilliseconds

    @Option(name: .customLong("root-client"), help: "A client whose root keeps its root under --squash root, by certificate name or pattern (repeatable; TLS only).")
    var rootClients: [String] = []

    @Option(help: "The private key of --tls-cert (PEM).")
    var tlsKey: String?

    @Option(help: "The cluster's CA certificate (PEM): clients, monitors and the standby must present certificates it signed.")
    var tlsCa: String?

    @Option(help: "This node's name, to authenticate to the standby.")
    var node: String = "server"

    @Option(help: "sync: answer mutations once the standby has them; async: at once (may lose the last ones on failover).")
    var replication: String = "sync"

    @Option(help: ArgumentHelp(
        "How long one mutation, sync or checkpoint may hold the journal while the monitor's challenge is still answered.",
        discussion: "A slow disk is not a failure: the server answers while it makes progress. Past this limit it counts "
            + "as wedged, the challenge goes unanswered, and the monitor fails it over."))
    var stallLimitMs: Int = Int(ExportServer.defaultStallLimit.nanoseconds / 1_000_000)

    @Option(help: ArgumentHelp(
        "How long a reply waits for the standby at most (sync mode) before the server answers without it.",
        discussion: "For a standby that stops acknowledging while its node still answers (a hung disk): past this "
            + "limit the server goes on alone, loudly, until the standby is in step again. A server its agent started "
            + "(--until-stdin-ends, --await-promotion) asks the agent first and goes on alone only on its consent."))
    var standbyWaitLimitMs: Int = Int(StandbyConfiguration.defaultWaitLimit.nanoseconds / 1_000_000)

    @Flag(help: ArgumentHelp(
        "Start ahead of a swap: bind the listening sockets, print 'waiting HOST:PORT', then wait for the agent's go-ahead on stdin.",
        discussion: "The go-ahead (a ServerControl frame) opens the export and serves (connections that arrived meanwhile "
            + "are answered at once), with or without waiting for a standby; the end of stdin exits. The agent starts the "
            + "next server of a swap this way before it fences the old one, so the pause holds no process start."))
    var awaitPromotion = false

    @Flag(help: ArgumentHelp(
        "Take the agent's commands on stdin, and exit when it ends (implied by --await-promotion).",
        discussion: "The agent that starts a server keeps a pipe to its stdin open for as long as it lives and never "
            + "closes it while the server is to run: when the agent dies, even by SIGKILL, the server exits at once "
            + "instead of serving on beside the servers the cluster knows."))
    var untilStdinEnds = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard !export.isEmpty, export.utf8.count <= 255, !export.contains("@"), !export.contains("/") else {
            throw ValidationError("export name must be 1-255 bytes without '@' or '/': '\(export)'")
        }
        guard stallLimitMs >= 100 else { throw ValidationError("--stall-limit-ms must be at least 100") }
        guard (100...600_000).contains(standbyWaitLimitMs) else {
            throw ValidationError("--standby-wait-limit-ms must be from 100 to 600000 (ten minutes)")
        }
        guard checkpointBytes >= 1 << 20 else { throw ValidationError("--checkpoint-bytes must be at least 1 MiB") }
        guard ["sync", "async"].contains(replication) else { throw ValidationError("--replication is sync or async, not '\(replication)'") }
        if standby != nil && secretFile == nil { throw ValidationError("--standby needs --secret-file") }
        if monitorListen != nil && secretFile == nil { throw ValidationError("--monitor-listen needs --secret-file") }
        guard [tlsCert, tlsKey, tlsCa].allSatisfy({ $0 == nil }) || [tlsCert, tlsKey, tlsCa].allSatisfy({ $0 != nil }) else {
            throw ValidationError("TLS needs all three of --tls-cert, --tls-key and --tls-ca (or none of them for plain TCP)")
        }
        guard ExportConfiguration.lockLeaseRange.contains(lockLeaseMilliseconds) else {
            throw ValidationError("--lock-lease-ms must be from \(ExportConfiguration.lockLeaseRange.lowerBound) to \(ExportConfiguration.lockLeaseRange.upperBound)")
        }
        guard Squash.Scope(rawValue: squash) != nil else { throw ValidationError("--squash is root, all or none, not '\(squash)'") }
        if !rootClients.isEmpty, tlsCert == nil {
            throw ValidationError("--root-client needs TLS (--tls-cert, --tls-key, --tls-ca): over plain TCP a client has no name")
        }
        if !rootClients.isEmpty, squash != "root" { throw ValidationError("--root-client needs --squash root") }
        if !(clients.isEmpty && readOnlyClients.isEmpty), tlsCert == nil {
            throw ValidationError("--client and --read-only-client need TLS (--tls-cert, --tls-key, --tls-ca): over plain TCP a client has no name")
        }
    }

    func run() throws {
        let logger = logging.bootstrap(label: "baton.serve")
        // Before any series is made: those made earlier would count nowhere.
        if metricsListen != nil { ProcessMetrics.bootstrap() }
        try prepareDiskOwner(logger: logger)
        let secret = try secretFile.map { try SecretFile.read($0) }
        let tls: TLSIdentity?
        do {
            tls = try tlsCert.map { try TLSIdentity(TLSFiles(certificate: $0, key: tlsKey!, authority: tlsCa!), roles: [.node]) }
        } catch {
            logger.critical("cannot use the TLS files", metadata: ["export": "\(export)", "error": "\(error)"])
            throw ExitCode(2)
        }
        var monitor: ExportServer.Listener?
        var otherPaths: [(clients: ExportServer.Listener, monitor: ExportServer.Listener?)] = []
        var goAlone = false
        // The agent's commands, and its end (see AgentControl); a server started by hand reads no stdin.
        let control = untilStdinEnds || awaitPromotion ? AgentControl(export: export, awaitsPromotion: awaitPromotion, logger: logger) : nil
        // Bound here, ahead of the server: the other paths' listeners take the
        // ports the first ones got (port 0), and a server started ahead of a
        // swap has every socket bound before its go-ahead.
        let (clientSocket, clientPort) = try ListeningSocket.open(listen, multipath: multipath)
        let clients = ExportServer.Listener.bound(clientSocket, NodeAddress(host: listen.host, port: clientPort))
        var monitorPort: Int?
        if let monitorListen {
            // Plain TCP: the monitor keeps a connection on each path itself.
            let (socket, port) = try ListeningSocket.open(monitorListen)
            monitor = .bound(socket, NodeAddress(host: monitorListen.host, port: port))
            monitorPort = port
        }
        for host in pathAddresses where host != listen.host {
            let (socket, _) = try ListeningSocket.open(NodeAddress(host: host, port: clientPort), multipath: multipath)
            let pathMonitor = try monitorPort.map { port in
                let (socket, _) = try ListeningSocket.open(NodeAddress(host: host, port: port))
                return ExportServer.Listener.bound(socket, NodeAddress(host: host, port: port))
            }
            otherPaths.append((.bound(socket, NodeAddress(host: host, port: clientPort)), pathMonitor))
        }
        if awaitPromotion {
            control?.report(.waitingForPromotion(clients: NodeAddress(host: listen.host, port: clientPort)))
            // Not a client is answered before the go-ahead: the agent sends it
            // once the old server is fenced and the new epoch is on disk.
            guard let alone = control?.waitForPromotion() else {
                logger.info("not promoted: stopping", metadata: ["export": "\(export)"])
                throw ExitCode(0)
            }
            goAlone = alone
        }
        let promoted = ContinuousClock.now
        let store: ExportStore
        do {
            store = try ExportStore(directory: data, exportName: export,
                                    limits: .init(checkpointAfterBytes: checkpointBytes), logger: logger)
        } catch {
            logger.critical("cannot open the export", metadata: ["export": "\(export)", "error": "\(error)"])
            throw ExitCode(2)
        }
        let opened = ContinuousClock.now
        let standbyConfiguration = standby.map {
            var configuration = StandbyConfiguration(agent: $0, node: node, secret: secret!, synchronous: replication == "sync",
                                                     waitLimit: .milliseconds(Int64(standbyWaitLimitMs)))
            configuration.multipath = multipath
            configuration.otherAddresses = standbyPathAddresses
            if let control {
                configuration.askAgentToAnswerAlone = { waited, sequence in
                    control.report(.standbyWaitLimitReached(waitedMilliseconds: UInt64(waited.components.seconds * 1000
                        + waited.components.attoseconds / 1_000_000_000_000_000), sequence: sequence))
                }
            }
            return configuration
        }
        let server = ExportServer(exportName: export, store: store, secret: secret, standby: standbyConfiguration,
                                  stallLimit: .milliseconds(Int64(stallLimitMs)), tls: tls, logger: logger)
        // Before the server says it listens: the agent may ask it to go on alone right after.
        control?.attach(server)
        if awaitPromotion {
            // The agent hears when the first connection is welcomed (it logs when clients came back).
            server.onFirstWelcome = { control?.report(.firstClientWelcomed) }
        }
        server.exportAddresses = Array(exportAddresses.prefix(Message.maxExportAddresses))
        server.multipath = multipath
        if !(self.clients.isEmpty && readOnlyClients.isEmpty) { server.access = ClientAccess(readWrite: self.clients, readOnly: readOnlyClients) }
        server.lockLease = .milliseconds(Int64(lockLeaseMilliseconds))
        server.squash = Squash(scope: Squash.Scope(rawValue: squash)!, anonymous: Credentials(uid: anonuid, gid: anongid),
                               rootClients: rootClients)
        if goAlone { server.continueWithoutStandby() }
        let bound = try server.start(clients: clients, monitor: monitor, otherPaths: otherPaths)
        let metrics = try metricsListen.map { address in
            try MetricsEndpoint(listen: address, logger: logger) {
                server.refreshMetrics()
                return ProcessMetrics.page()
            }
        }
        let listening = ServerReport.listening(clients: bound.clients, monitor: bound.monitor, metrics: metrics?.address)
        if let control {
            control.report(listening)
        } else {
            // Tests and scripts read the bound ports from here when they asked for port 0.
            FileHandle.standardOutput.write(Data((listening.listeningLine! + "\n").utf8))
        }
        if awaitPromotion {
            logger.info("promoted: serving", metadata: ["export": "\(export)", "afterGoAhead": "\(ContinuousClock.now - promoted)",
                                               "opening": "\(opened - promoted)"])
        }
        let signals = onTerminationSignals { signalNumber in
            logger.info("signal received, stopping", metadata: ["export": "\(export)", "signal": "\(signalNumber)"])
            server.stop()
        }
        try server.wait()
        withExtendedLifetime((signals, control, metrics)) {}
    }
}
