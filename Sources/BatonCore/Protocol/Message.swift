/// Everything that crosses a client-server connection. On the wire each
/// message is one frame: a u32 length, then the message bytes.
public enum Message: Hashable, Sendable {
    /// Client → server, first on every connection.
    case hello(export: String, session: UInt64, version: UInt32)
    /// Server → client: this server is active for the export; requests may follow.
    case welcome(epoch: UInt64)
    /// Server → client: this server will not serve the export; the client tries another address.
    case refused(Refusal, detail: String)
    /// Server → client (protocol 2), after `welcome`: every address where the
    /// export may be served (each node's address on each network path,
    /// this node's first), so that a mount naming one address finds the
    /// export on any node and path (issue 9). At most `maxExportAddresses`.
    /// `multipath`: the nodes have two paths; connect with MPTCP.
    case exportAddresses([HostAndPort], multipath: Bool)
    /// Client → server. `oldestUnanswered` lets the server drop cached replies below it.
    /// `caller` (protocol 3): who on the client asks, for a server that
    /// squashes identities (`Squash`); a write, checked when its handle was
    /// opened, goes without one, so its frame keeps the layout the server
    /// decodes in place.
    case request(sequence: UInt64, oldestUnanswered: UInt64, Operation, caller: Credentials? = nil)
    /// Server → client.
    case reply(sequence: UInt64, epoch: UInt64, Reply)
    /// Server → client (protocol 3), after `welcome`: the session keeps its
    /// locks only while it renews them within this time (`LockLeases`).
    case lockLease(milliseconds: UInt32)
    /// Client → server (protocol 3): the session is alive; every third of the lease.
    case leaseRenewal
    /// Admin → server, on the client port (`baton locks`): which locks are held.
    case locksAsked
    /// Server → admin: a `LockListing` as JSON.
    case locksAnswer(json: String)

    // Monitor ↔ export server (DESIGN.md §2 "Monitor").
    /// Monitor → server: a fresh challenge, answered through the request path.
    case probe(key: [UInt8])
    /// Server → monitor: HMAC(secret, key ‖ epoch ‖ journal position).
    case probeAnswer(key: [UInt8], epoch: UInt64, sequence: UInt64, response: [UInt8])
    /// Server → monitor, at a fixed rate once probed. `alone`: the server
    /// answers without waiting for its standby (after a swap, or with the
    /// peer found gone), so a failover to the standby could lose what it
    /// answered: the monitor stands down until the server's replies wait
    /// for the standby again (`repliesWait`). Sent last, and optional on
    /// the wire: an older server's heartbeat decodes as not alone.
    case heartbeat(epoch: UInt64, sequence: UInt64, alone: Bool = false)

    // Between nodes: every connection to an agent is authenticated first.
    /// Agent → connecting peer: prove you hold the shared secret.
    case challenge(nonce: [UInt8])
    /// Peer → agent: HMAC(secret, nonce ‖ node name).
    case authenticate(node: String, proof: [UInt8])

    // Export server → its standby replica (in the peer's agent).
    case replicaHello(export: String, epoch: UInt64)
    /// The replica's position: which epoch wrote each record of its journal,
    /// so the server finds the last record both hold (`JournalHistory`).
    case replicaPosition(JournalHistory)
    /// Server → replica: the records after `sequence` differ (the replica's
    /// were never received by this server, or the replica lacks the
    /// server's). Which files did the replica's records after it change?
    case catchUp(from: UInt64)
    /// Replica → server: those files, or nil when it cannot tell (its journal
    /// no longer reaches back, or its node rebooted since the files were written).
    case filesChanged([InodeNumber]?)
    /// A copy follows: partial (the namespace and only the files either side
    /// changed) or full; `bytes` is about what it will send, for progress.
    case snapshotBegin(partial: Bool, bytes: UInt64)
    /// A copy, in frame-sized pieces: the checkpoint (as inode 0, which no
    /// export uses), then the data of each file, then the end.
    case snapshotData(inode: InodeNumber, offset: UInt64, data: [UInt8])
    case snapshotEnd(sequence: UInt64)
    /// One record, with its write data.
    case replicate(JournalRecord)
    /// The replica has the record (sync mode acknowledges after this).
    case replicated(sequence: UInt64)
    /// Make everything up to `sequence` durable on the replica's disk.
    case replicaSync(sequence: UInt64)
    case replicaSynced(sequence: UInt64)
    /// Server → replica: replies wait for this replica from now on, and
    /// every record answered earlier (also those answered alone, after a
    /// swap) is at most `through`. Once the replica has applied `through`,
    /// a failover to it loses nothing acknowledged: its monitor may watch.
    case repliesWait(through: UInt64)

    // Admin CLI and peer agents → agent.
    case agentRequest(AgentRequest)
    case agentReply(ok: Bool, text: String)

    /// 2: the server sends `exportAddresses` after `welcome`.
    /// 3: requests name their caller (`request`'s `caller`); lock leases are renewed (`lockLease`, `leaseRenewal`).
    public static let protocolVersion: UInt32 = 3
    /// What a server accepts in `hello`: a client of protocol 1 gets no
    /// `exportAddresses`; one older than 3 cannot mount an export that squashes.
    public static let supportedVersions: ClosedRange<UInt32> = 1...3
    /// The first protocol whose requests name their caller.
    public static let callerVersion: UInt32 = 3
    /// The first protocol whose clients renew their lock leases.
    public static let leaseVersion: UInt32 = 3
    public static let maxExportAddresses = 16
    /// A `LockListing` of `maxEntries` entries fits many times over.
    public static let maxLocksAnswerBytes = 4 << 20
    /// `snapshotData` of this inode carries the checkpoint.
    public static let snapshotCheckpointInode: InodeNumber = 0
    /// At most this many runs of a `JournalHistory` are sent (the latest);
    /// at most this many files in `filesChanged`: a replica with more takes a full copy.
    public static let maxHistoryRuns = 4096
    public static let maxChangedFiles = 100_000
}

public enum Refusal: UInt8, Hashable, Sendable {
    case unknownExport = 1
    case notActive
    case badVersion
    case malformed
    case shuttingDown
    case unauthenticated
    /// A replica refuses records of an epoch older than its own (DESIGN.md §4.2).
    case staleEpoch
    /// A replica cannot keep records (its disk failed): the server goes on
    /// without it rather than wait for it (DESIGN.md §4.6).
    case replicaFailed
    /// The replica's node runs a swap against this server: its replies must
    /// keep waiting (not answer alone) until the swap ends.
    case swapUnderWay
    /// The export's client lists do not let this client mount (its certificate's name is on neither).
    case notAllowed
}

/// What an agent is asked to do.
public enum AgentRequest: Hashable, Sendable {
    /// The agent's view of every export, as JSON.
    case status
    /// Kill this node's server of `export` if its epoch is `epoch` or older, and wait for its exit.
    case fence(export: String, epoch: UInt64)
    /// A planned swap: the server of `epoch` takes no more mutations, waits
    /// until its standby has every record, and exits (fenced if it does not).
    case handOver(export: String, epoch: UInt64)
    /// A planned swap of `export` to the other node.
    case migrate(export: String)
    /// An admin's word: the node waiting for its peer serves `export` without it.
    case forceServe(export: String)
    /// The peer's server of `epoch` has waited for this node's replica past
    /// the wait limit and asks to answer without it (DRBD's outdate-peer):
    /// the replica stands down (`ExportRole.outdate`), or the answer says why not.
    case outdate(export: String, epoch: UInt64)
}

extension Message {
    /// Wire tags; public so a server can frame read data in place.
    public enum Tag: UInt8 {
        case hello = 1, welcome, refused, request, reply, exportAddresses, requestWithCaller, lockLease, leaseRenewal
        case probe = 10, probeAnswer, heartbeat
        case challenge = 20, authenticate
        case replicaHello = 30, replicaPosition, snapshotData, snapshotEnd, replicate, replicated, replicaSync, replicaSynced
        case agentRequest = 40, agentReply
        case catchUp = 50, filesChanged, snapshotBegin, repliesWait
        case locksAsked = 60, locksAnswer
    }

    public func encode(to w: inout ByteWriter) {
        switch self {
        case .hello(let export, let session, let version):
            w.write(Tag.hello.rawValue); w.write(export); w.write(session); w.write(version)
        case .welcome(let epoch): w.write(Tag.welcome.rawValue); w.write(epoch)
        case .refused(let refusal, let detail): w.write(Tag.refused.rawValue); w.write(refusal.rawValue); w.write(detail)
        case .exportAddresses(let addresses, let multipath):
            w.write(Tag.exportAddresses.rawValue); w.write(UInt32(addresses.count))
            for address in addresses { w.write(address.description) }
            w.write(multipath)
        case .request(let sequence, let oldest, let operation, nil):
            w.write(Tag.request.rawValue); w.write(sequence); w.write(oldest); operation.encode(to: &w)
        case .request(let sequence, let oldest, let operation, let caller?):
            w.write(Tag.requestWithCaller.rawValue); w.write(sequence); w.write(oldest); w.write(caller.uid); w.write(caller.gid)
            operation.encode(to: &w)
        case .reply(let sequence, let epoch, let reply):
            w.write(Tag.reply.rawValue); w.write(sequence); w.write(epoch); reply.encode(to: &w)
        case .lockLease(let milliseconds): w.write(Tag.lockLease.rawValue); w.write(milliseconds)
        case .leaseRenewal: w.write(Tag.leaseRenewal.rawValue)
        case .locksAsked: w.write(Tag.locksAsked.rawValue)
        case .locksAnswer(let json): w.write(Tag.locksAnswer.rawValue); w.write(json)
        case .probe(let key): w.write(Tag.probe.rawValue); w.write(bytes: key)
        case .probeAnswer(let key, let epoch, let sequence, let response):
            w.write(Tag.probeAnswer.rawValue); w.write(bytes: key); w.write(epoch); w.write(sequence); w.write(bytes: response)
        case .heartbeat(let epoch, let sequence, let alone):
            w.write(Tag.heartbeat.rawValue); w.write(epoch); w.write(sequence)
            if alone { w.write(true) }
        case .challenge(let nonce): w.write(Tag.challenge.rawValue); w.write(bytes: nonce)
        case .authenticate(let node, let proof): w.write(Tag.authenticate.rawValue); w.write(node); w.write(bytes: proof)
        case .replicaHello(let export, let epoch): w.write(Tag.replicaHello.rawValue); w.write(export); w.write(epoch)
        case .replicaPosition(let history):
            // The latest runs only: older ones narrow what is known, nothing more.
            let runs = history.runs.suffix(Self.maxHistoryRuns)
            w.write(Tag.replicaPosition.rawValue); w.write(history.last); w.write(UInt32(runs.count))
            for run in runs { w.write(run.first); w.write(run.epoch) }
        case .catchUp(let sequence): w.write(Tag.catchUp.rawValue); w.write(sequence)
        case .filesChanged(let inodes):
            w.write(Tag.filesChanged.rawValue); w.write(inodes != nil)
            if let inodes {
                w.write(UInt32(inodes.count))
                for ino in inodes { w.write(ino) }
            }
        case .snapshotBegin(let partial, let bytes): w.write(Tag.snapshotBegin.rawValue); w.write(partial); w.write(bytes)
        case .snapshotData(let inode, let offset, let data):
            w.write(Tag.snapshotData.rawValue); w.write(inode); w.write(offset); w.write(bytes: data)
        case .snapshotEnd(let sequence): w.write(Tag.snapshotEnd.rawValue); w.write(sequence)
        case .replicate(let record): w.write(Tag.replicate.rawValue); w.write(raw: JournalCodec.encode(record))
        case .replicated(let sequence): w.write(Tag.replicated.rawValue); w.write(sequence)
        case .replicaSync(let sequence): w.write(Tag.replicaSync.rawValue); w.write(sequence)
        case .replicaSynced(let sequence): w.write(Tag.replicaSynced.rawValue); w.write(sequence)
        case .repliesWait(let sequence): w.write(Tag.repliesWait.rawValue); w.write(sequence)
        case .agentRequest(let request):
            w.write(Tag.agentRequest.rawValue)
            switch request {
            case .status: w.write(UInt8(1))
            case .fence(let export, let epoch): w.write(UInt8(2)); w.write(export); w.write(epoch)
            case .migrate(let export): w.write(UInt8(3)); w.write(export)
            case .handOver(let export, let epoch): w.write(UInt8(4)); w.write(export); w.write(epoch)
            case .forceServe(let export): w.write(UInt8(5)); w.write(export)
            case .outdate(let export, let epoch): w.write(UInt8(6)); w.write(export); w.write(epoch)
            }
        case .agentReply(let ok, let text): w.write(Tag.agentReply.rawValue); w.write(ok); w.write(text)
        }
    }

    /// Encodes as a whole frame (length prefix included).
    public func frame() -> [UInt8] { ByteWriter.frame(capacity: 128) { encode(to: &$0) } }

    public static func decode(from r: inout ByteReader) throws(DecodeError) -> Message {
        let tag = try r.readTag(Tag.self, kind: "message")
        let message: Message
        switch tag {
        case .hello:
            message = .hello(export: try r.readString(limit: 255, kind: "export name"), session: try r.readUInt64(),
                             version: try r.readUInt32())
        case .welcome: message = .welcome(epoch: try r.readUInt64())
        case .refused:
            let raw = try r.readUInt8()
            guard let refusal = Refusal(rawValue: raw) else { throw .unknownTag(kind: "refusal", tag: UInt32(raw)) }
            message = .refused(refusal, detail: try r.readString(limit: 4096, kind: "refusal detail"))
        case .exportAddresses:
            let count = try r.readUInt32()
            guard count <= Message.maxExportAddresses else {
                throw .invalid("an export address list of \(count) entries exceeds the limit of \(Message.maxExportAddresses)")
            }
            var addresses: [HostAndPort] = []
            for _ in 0..<count {
                let text = try r.readString(limit: 300, kind: "export address")
                guard let address = HostAndPort(text) else { throw .invalid("export address '\(text)' is not HOST:PORT") }
                addresses.append(address)
            }
            message = .exportAddresses(addresses, multipath: try r.readBool())
        case .request:
            message = .request(sequence: try r.readUInt64(), oldestUnanswered: try r.readUInt64(), try Operation.decode(from: &r))
        case .requestWithCaller:
            let sequence = try r.readUInt64(), oldest = try r.readUInt64()
            let caller = Credentials(uid: try r.readUInt32(), gid: try r.readUInt32())
            message = .request(sequence: sequence, oldestUnanswered: oldest, try Operation.decode(from: &r), caller: caller)
        case .reply:
            message = .reply(sequence: try r.readUInt64(), epoch: try r.readUInt64(), try Reply.decode(from: &r))
        case .lockLease: message = .lockLease(milliseconds: try r.readUInt32())
        case .leaseRenewal: message = .leaseRenewal
        case .locksAsked: message = .locksAsked
        case .locksAnswer: message = .locksAnswer(json: try r.readString(limit: Message.maxLocksAnswerBytes, kind: "lock listing"))
        case .probe: message = .probe(key: try r.readBytes(exactly: ChallengeMAC.keyBytes, kind: "probe key"))
        case .probeAnswer:
            message = .probeAnswer(key: try r.readBytes(exactly: ChallengeMAC.keyBytes, kind: "probe key"), epoch: try r.readUInt64(),
                                   sequence: try r.readUInt64(), response: try r.readBytes(limit: 64, kind: "probe response"))
        case .heartbeat:
            message = .heartbeat(epoch: try r.readUInt64(), sequence: try r.readUInt64(), alone: r.remaining > 0 ? try r.readBool() : false)
        case .challenge: message = .challenge(nonce: try r.readBytes(limit: 64, kind: "nonce"))
        case .authenticate:
            message = .authenticate(node: try r.readString(limit: 255, kind: "node name"), proof: try r.readBytes(limit: 64, kind: "proof"))
        case .replicaHello: message = .replicaHello(export: try r.readString(limit: 255, kind: "export name"), epoch: try r.readUInt64())
        case .replicaPosition:
            let last = try r.readUInt64()
            let count = Int(try r.readUInt32())
            guard count <= Self.maxHistoryRuns else { throw .tooLarge(kind: "journal history", size: count, limit: Self.maxHistoryRuns) }
            var runs: [JournalHistory.Run] = []
            for _ in 0..<count { runs.append(JournalHistory.Run(first: try r.readUInt64(), epoch: try r.readUInt64())) }
            message = .replicaPosition(try JournalHistory(runs: runs, last: last))
        case .catchUp: message = .catchUp(from: try r.readUInt64())
        case .filesChanged:
            if try r.readBool() {
                let count = Int(try r.readUInt32())
                guard count <= Self.maxChangedFiles else { throw .tooLarge(kind: "changed files", size: count, limit: Self.maxChangedFiles) }
                var inodes: [InodeNumber] = []
                for _ in 0..<count { inodes.append(try r.readUInt64()) }
                message = .filesChanged(inodes)
            } else {
                message = .filesChanged(nil)
            }
        case .snapshotBegin: message = .snapshotBegin(partial: try r.readBool(), bytes: try r.readUInt64())
        case .snapshotData:
            message = .snapshotData(inode: try r.readUInt64(), offset: try r.readUInt64(),
                                    data: try r.readBytes(limit: WireLimits.maxDataBytes, kind: "snapshot data"))
        case .snapshotEnd: message = .snapshotEnd(sequence: try r.readUInt64())
        case .replicate:
            let rest = UnsafeRawBufferPointer(rebasing: r.bytes[r.offset...])
            guard case .success(let (record, used)) = JournalCodec.decodeRecord(rest, at: 0), used == rest.count else {
                throw .invalid("replicated record does not decode")
            }
            _ = try r.readRaw(count: used)
            message = .replicate(record)
        case .replicated: message = .replicated(sequence: try r.readUInt64())
        case .replicaSync: message = .replicaSync(sequence: try r.readUInt64())
        case .replicaSynced: message = .replicaSynced(sequence: try r.readUInt64())
        case .repliesWait: message = .repliesWait(through: try r.readUInt64())
        case .agentRequest:
            switch try r.readUInt8() {
            case 1: message = .agentRequest(.status)
            case 2: message = .agentRequest(.fence(export: try r.readString(limit: 255, kind: "export name"), epoch: try r.readUInt64()))
            case 3: message = .agentRequest(.migrate(export: try r.readString(limit: 255, kind: "export name")))
            case 4: message = .agentRequest(.handOver(export: try r.readString(limit: 255, kind: "export name"), epoch: try r.readUInt64()))
            case 5: message = .agentRequest(.forceServe(export: try r.readString(limit: 255, kind: "export name")))
            case 6: message = .agentRequest(.outdate(export: try r.readString(limit: 255, kind: "export name"), epoch: try r.readUInt64()))
            case let other: throw .unknownTag(kind: "agent request", tag: UInt32(other))
            }
        case .agentReply: message = .agentReply(ok: try r.readBool(), text: try r.readString(limit: 1 << 20, kind: "agent reply"))
        }
        try r.expectEnd()
        return message
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> Message {
        var reader = ByteReader(bytes)
        return try decode(from: &reader)
    }
}
