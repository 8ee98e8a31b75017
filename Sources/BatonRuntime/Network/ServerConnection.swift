import BatonCore

import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The client's link to the export: finds the active server among the
/// export's node addresses, sends requests tagged with (session, sequence),
/// and when the connection is lost or the server says it is not active,
/// reconnects (to the same or another node) and re-sends every unanswered
/// request in order. The server's journaled reply cache makes the re-sent
/// mutations happen once. Applications see a pause, not an error, unless the
/// request timeout expires.
public final class ServerConnection: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var exportName: String
        public var addresses: [NodeAddress]
        /// How long a request may wait for an answer (across reconnections) before it fails with EIO.
        public var requestTimeout: TimeAmount
        public var connectTimeout: TimeAmount = .seconds(1)
        /// Pause after every address was tried once without success: short,
        /// because during a swap the new server comes up within tens of ms.
        public var retryDelay: TimeAmount = .milliseconds(20)
        /// A request unanswered this long makes the client look at the other
        /// addresses for a server of a newer epoch: a stalled server that its
        /// peer could not fence keeps the connection open but answers nothing.
        public var stallCheckAfter: TimeAmount = .seconds(1)
        /// Connect with MPTCP: the export's nodes have two network paths (a
        /// server says so after its welcome; see `Multipath`).
        public var multipath = false
        /// The mount's client certificate on a TLS cluster; nil: plain TCP.
        public var tls: TLSIdentity?

        public init(exportName: String, addresses: [NodeAddress], requestTimeout: TimeAmount = .seconds(60)) {
            self.exportName = exportName
            self.addresses = addresses
            self.requestTimeout = requestTimeout
        }
    }

    private struct Pending {
        var frame: ByteBuffer
        var completion: @Sendable (Reply) -> Void
        var deadline: NIODeadline
    }

    private struct State {
        var channel: Channel?
        var connecting = false
        var nextSequence: UInt64 = 1
        var pending: [UInt64: Pending] = [:]
        var highestEpoch: UInt64 = 0
        /// Where the export may be served: the mount's addresses, then what
        /// servers tell (`exportAddresses`: every node on every path).
        var addresses: [NodeAddress]
        /// Connections from now on are MPTCP (`Configuration.multipath`, or a server said so).
        var multipath: Bool
        var addressIndex = 0
        var closed = false
        var lastRefusal: String?
        /// A look at the other addresses is under way (see `lookForNewerServer`).
        var looking = false
        /// The connection is being closed to gain its missing subflow: reconnect to the same address.
        var reconnectingInPlace = false
        var lastSubflowReconnect: NIODeadline?
        /// How often to renew the session's lock lease (a third of what the server said); nil: not told yet.
        var renewalInterval: TimeAmount?
    }

    public let configuration: Configuration
    public let session: UInt64
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let state: NIOLockedValueBox<State>
    private let allocator = ByteBufferAllocator()

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.session = UInt64.random(in: 1...UInt64.max)
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        state = NIOLockedValueBox(State(addresses: configuration.addresses, multipath: configuration.multipath))
        scheduleTimeoutSweep()
        scheduleSubflowCheck()
    }

    // MARK: Requests

    public func send(_ operation: Operation, caller: Credentials? = nil, completion: @escaping @Sendable (Reply) -> Void) {
        // A lock that waits for another client's release has no deadline: F_SETLKW waits as long as it must.
        enqueue(completion, timeout: operation.waitsForOtherOwners ? nil : configuration.requestTimeout) { [allocator] sequence, oldest in
            Message.request(sequence: sequence, oldestUnanswered: oldest, operation, caller: caller).frame(allocator: allocator)
        }
    }

    /// A write request framed straight from the caller's buffer (one copy).
    public func sendWrite(_ inode: InodeNumber, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer,
                          completion: @escaping @Sendable (Reply) -> Void) {
        enqueue(completion, timeout: configuration.requestTimeout) { [allocator] sequence, oldest in
            var frame = Message.request(sequence: sequence, oldestUnanswered: oldest,
                                        .write(inode, handle: handle, offset: offset, data: [])).frame(allocator: allocator)
            // The data is the frame's last field: fix its length and the frame's, then append it.
            frame.reserveCapacity(minimumWritableBytes: data.count)
            frame.setInteger(UInt32(data.count), at: frame.writerIndex - 4, endianness: .little)
            frame.setInteger(UInt32(frame.readableBytes - 4 + data.count), at: frame.readerIndex, endianness: .little)
            frame.writeBytes(data)
            return frame
        }
    }

    /// Numbers the request, builds its frame (outside the lock: it may copy a
    /// MiB), keeps the frame for re-sending, and sends it if connected.
    ///
    /// Between numbering and keeping, the request is in no list; that is safe:
    /// it has not been sent, so the server holds no reply of it to forget, and
    /// a reconnection in between finds it afterwards in `pending`.
    private func enqueue(_ completion: @escaping @Sendable (Reply) -> Void, timeout: TimeAmount?,
                         frame makeFrame: (_ sequence: UInt64, _ oldestUnanswered: UInt64) -> ByteBuffer) {
        let deadline = timeout.map { NIODeadline.now() + $0 } ?? .distantFuture
        let numbers = state.withLockedValue { state -> (UInt64, UInt64)? in
            if state.closed { return nil }
            let sequence = state.nextSequence
            state.nextSequence += 1
            return (sequence, min(state.pending.keys.min() ?? sequence, sequence))
        }
        guard let (sequence, oldest) = numbers else { return completion(.error(.ENOTCONN)) }
        let frame = makeFrame(sequence, oldest)
        let channel = state.withLockedValue { state -> Channel? in
            state.pending[sequence] = Pending(frame: frame, completion: completion, deadline: deadline)
            return state.channel
        }
        if let channel {
            channel.writeAndFlush(frame, promise: nil)
        } else {
            connectIfNeeded()
        }
    }

    /// Connects now and waits for the first server to welcome this client;
    /// throws with the servers' own words when none does in time (used by
    /// `baton mount` to fail early on a wrong export or address).
    public func waitUntilConnected(timeout: TimeAmount) throws {
        connectIfNeeded()
        let deadline = NIODeadline.now() + timeout
        while NIODeadline.now() < deadline {
            if state.withLockedValue({ $0.channel != nil }) { return }
            usleep(10_000)
        }
        let (refusal, addresses) = state.withLockedValue { ($0.lastRefusal, $0.addresses) }
        throw ConnectionError.noServer(export: configuration.exportName, addresses: addresses, lastError: refusal)
    }

    public func close() {
        let (channel, pending) = state.withLockedValue { state in
            state.closed = true
            defer { state.pending = [:] }
            return (state.channel, state.pending)
        }
        for request in pending.values { request.completion(.error(.ENOTCONN)) }
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }

    // MARK: Connecting

    private func connectIfNeeded() {
        let start = state.withLockedValue { state -> Bool in
            guard !state.connecting, state.channel == nil, !state.closed else { return false }
            state.connecting = true
            return true
        }
        if start { tryAddress(attempt: 0) }
    }

    private func tryAddress(attempt: Int) {
        let (address, closed, multipath) = state.withLockedValue { state in
            (state.addresses[state.addressIndex % state.addresses.count], state.closed, state.multipath)
        }
        if closed { return }
        let welcomed = group.next().makePromise(of: UInt64.self)
        // A stopped server's kernel still accepts the connection: without an
        // answer to hello in time, try the next address.
        group.next().scheduleTask(in: configuration.connectTimeout) {
            welcomed.fail(RefusedError(refusal: .notActive, detail: "no answer to hello within \(self.configuration.connectTimeout)"))
        }
        ClientBootstrap(group: group)
            .multipath(multipath)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try configuration.tls.addClientHandlers(to: channel.pipeline.syncOperations)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ReplyHandler(connection: self, welcomed: welcomed))
                }
            }
            .connect(resolving: address, on: group.next())
            .flatMap { [self] channel in
                channel.writeAndFlush(Message.hello(export: configuration.exportName, session: session,
                                                    version: Message.protocolVersion).frame(allocator: allocator))
                    .flatMap { welcomed.futureResult.map { epoch in (channel, epoch) } }
                    .flatMapErrorThrowing { error in
                        channel.close(promise: nil)
                        throw error
                    }
            }
            .whenComplete { [self] result in
                switch result {
                case .success(let (channel, epoch)):
                    connected(channel, epoch: epoch, address: address)
                case .failure(let error):
                    welcomed.fail(error)
                    let next = attempt + 1
                    state.withLockedValue { state in
                        state.addressIndex += 1
                        state.lastRefusal = "\(address): \(error)"
                    }
                    logger.debug("server not reachable", metadata: [
                        "export": "\(configuration.exportName)", "address": "\(address)", "error": "\(error)",
                    ])
                    // After a full round of addresses, pause before the next:
                    // 2 ms, then twice as long each round up to `retryDelay`
                    // (a swap's new server comes up within milliseconds).
                    let count = state.withLockedValue { $0.addresses.count }
                    let rounds = next / count
                    let delay = next % count == 0
                        ? min(configuration.retryDelay, .milliseconds(Int64(1) << min(rounds, 20))) : .zero
                    group.next().scheduleTask(in: delay) { self.tryAddress(attempt: next) }
                }
            }
    }

    private func connected(_ channel: Channel, epoch: UInt64, address: NodeAddress) {
        let (resend, stale) = state.withLockedValue { state -> ([ByteBuffer], Bool) in
            if epoch < state.highestEpoch { return ([], true) }
            state.highestEpoch = epoch
            state.channel = channel
            state.connecting = false
            state.lastRefusal = nil
            return (state.pending.sorted { $0.key < $1.key }.map { $0.value.frame }, false)
        }
        if stale {
            // A server of an older epoch was fenced; it must not be used again.
            logger.warning("refusing a server of an older epoch", metadata: [
                "export": "\(configuration.exportName)", "address": "\(address)", "epoch": "\(epoch)",
            ])
            channel.close(promise: nil)
            return
        }
        logger.info("connected to export server", metadata: [
            "export": "\(configuration.exportName)", "address": "\(address)", "epoch": "\(epoch)",
            "resent": "\(resend.count)",
        ])
        for frame in resend { channel.write(frame, promise: nil) }
        channel.flush()
    }

    fileprivate func lost(_ channel: Channel, reason: String) {
        let reconnect = state.withLockedValue { state -> Bool in
            guard state.channel === channel else { return false }
            state.channel = nil
            // The server closed: after a swap the next one is at another address, try those first.
            if !state.reconnectingInPlace { state.addressIndex += 1 }
            state.reconnectingInPlace = false
            return !state.closed
        }
        guard reconnect else { return }
        logger.warning("connection to export server lost; reconnecting", metadata: [
            "export": "\(configuration.exportName)", "reason": "\(reason)",
        ])
        connectIfNeeded()
    }

    fileprivate func received(sequence: UInt64, epoch: UInt64, reply: Reply) {
        let request = state.withLockedValue { state -> Pending? in
            // Answers from a server of an older epoch are not trusted (DESIGN.md §4.2).
            guard epoch >= state.highestEpoch else { return nil }
            return state.pending.removeValue(forKey: sequence)
        }
        request?.completion(reply)
    }

    /// A server told where the export may be served: those addresses, the
    /// connected one first, then the mount's own that it did not name; and
    /// whether to connect with MPTCP (from the next connection on).
    fileprivate func learned(_ told: [NodeAddress], multipath: Bool, from channel: Channel) {
        let changed = state.withLockedValue { state -> [NodeAddress]? in
            guard state.channel === channel || state.connecting else { return nil }
            state.multipath = multipath
            var addresses = told
            for address in state.addresses where !addresses.contains(address) { addresses.append(address) }
            guard addresses != state.addresses else { return nil }
            let current = state.addresses[state.addressIndex % state.addresses.count]
            state.addresses = addresses
            state.addressIndex = addresses.firstIndex(of: current) ?? 0
            return addresses
        }
        if let changed {
            logger.info("export addresses learned from the server", metadata: [
                "export": "\(configuration.exportName)", "addresses": "\(changed.map(\.description).joined(separator: ","))",
            ])
        }
    }

    /// The server keeps this session's locks while it renews them within
    /// `lease` (`LockLeases`): renew every third of it, from now on.
    fileprivate func toldLockLease(_ lease: TimeAmount) {
        let start = state.withLockedValue { state -> Bool in
            defer { state.renewalInterval = max(.nanoseconds(lease.nanoseconds / 3), .milliseconds(10)) }
            return state.renewalInterval == nil
        }
        if start { scheduleLeaseRenewal() }
    }

    private func scheduleLeaseRenewal() {
        let interval = state.withLockedValue { $0.renewalInterval } ?? .seconds(1)
        group.next().scheduleTask(in: interval) { [self] in
            let (channel, closed) = state.withLockedValue { ($0.channel, $0.closed) }
            if closed { return }
            channel?.writeAndFlush(Message.leaseRenewal.frame(allocator: allocator), promise: nil)
            scheduleLeaseRenewal()
        }
    }

    fileprivate func refused(_ refusal: Refusal, detail: String) {
        state.withLockedValue { $0.lastRefusal = "\(refusal): \(detail)" }
    }

    // MARK: Multipath

    /// A connection that lacks the subflow to the server's other address
    /// (`Multipath.lacksAnnouncedSubflow`) is made again, to the same
    /// address; the unanswered requests are re-sent, as after any reconnection.
    private func scheduleSubflowCheck() {
        group.next().scheduleTask(in: Multipath.subflowCheckInterval) { [self] in
            let (channel, closed, due) = state.withLockedValue { state -> (Channel?, Bool, Bool) in
                let due = state.multipath
                    && state.lastSubflowReconnect.map { NIODeadline.now() - $0 >= Multipath.subflowReconnectInterval } ?? true
                return (state.channel, state.closed, due)
            }
            if closed { return }
            defer { scheduleSubflowCheck() }
            guard due, let channel else { return }
            Multipath.lacksAnnouncedSubflow(channel).whenSuccess { [self] lacks in
                guard lacks else { return }
                let reconnect = state.withLockedValue { state -> Bool in
                    guard state.channel === channel else { return false }
                    state.reconnectingInPlace = true
                    state.lastSubflowReconnect = NIODeadline.now()
                    return true
                }
                guard reconnect else { return }
                logger.notice("connection has no subflow on the server's other path: connecting again to gain it", metadata: [
                    "export": "\(configuration.exportName)", "address": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
                ])
                channel.close(promise: nil)
            }
        }
    }

    /// Fails requests whose timeout has passed, so no application waits forever.
    private func scheduleTimeoutSweep() {
        group.next().scheduleTask(in: .milliseconds(250)) { [self] in
            let now = NIODeadline.now()
            let (expired, closed) = state.withLockedValue { state -> ([Pending], Bool) in
                let expired = state.pending.filter { $0.value.deadline < now }
                for key in expired.keys { state.pending.removeValue(forKey: key) }
                return (Array(expired.values), state.closed)
            }
            if !expired.isEmpty {
                logger.error("requests timed out without an answer from any server", metadata: [
                    "export": "\(configuration.exportName)", "count": "\(expired.count)",
                    "timeout": "\(configuration.requestTimeout)",
                ])
            }
            for request in expired { request.completion(.error(.EIO)) }
            let oldest = state.withLockedValue { $0.channel == nil ? nil : $0.pending.values.map(\.deadline).min() }
            if let oldest, oldest - configuration.requestTimeout + configuration.stallCheckAfter < now {
                lookForNewerServer()
            }
            if !closed { scheduleTimeoutSweep() }
        }
    }

    /// Asks every address whether it serves the export at a newer epoch than
    /// the connected server; if one does, the connection moves there (the
    /// unanswered requests are re-sent to it).
    private func lookForNewerServer() {
        let (current, start) = state.withLockedValue { state -> (UInt64, Bool) in
            guard !state.looking, !state.closed else { return (0, false) }
            state.looking = true
            return (state.highestEpoch, true)
        }
        guard start else { return }
        // Not MPTCP: a short look, over whichever path the address is on.
        let addresses = state.withLockedValue { $0.addresses }
        let answers = addresses.enumerated().map { index, address in
            ClientBootstrap(group: group)
                .connectTimeout(.milliseconds(300))
                .channelInitializer { [configuration] channel in
                    channel.eventLoop.makeCompletedFuture {
                        try configuration.tls.addClientHandlers(to: channel.pipeline.syncOperations)
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                        try channel.pipeline.syncOperations.addHandler(EpochProbeHandler())
                    }
                }
                .connect(resolving: address, on: group.next())
                .flatMap { [self] channel -> EventLoopFuture<(Int, UInt64)> in
                    channel.writeAndFlush(Message.hello(export: configuration.exportName, session: session,
                                                        version: Message.protocolVersion).frame(allocator: allocator), promise: nil)
                    let answer = try! channel.pipeline.syncOperations.handler(type: EpochProbeHandler.self).epoch.futureResult
                    channel.eventLoop.scheduleTask(in: .milliseconds(300)) { channel.close(promise: nil) }
                    return answer.map { (index, $0) }.always { _ in channel.close(promise: nil) }
                }
        }
        EventLoopFuture.whenAllComplete(answers, on: group.next()).whenComplete { [self] results in
            let newer = (try? results.get())?.compactMap { try? $0.get() }.filter { $0.1 > current }.max { $0.1 < $1.1 }
            let channel = state.withLockedValue { state -> Channel? in
                state.looking = false
                guard let newer else { return nil }
                // One before it: closing the connection moves on to the next address (see `lost`).
                let index = state.addresses.firstIndex(of: addresses[newer.0]) ?? 0
                state.addressIndex = index + state.addresses.count - 1
                return state.channel
            }
            if let newer, let channel {
                logger.warning("a newer server serves the export: leaving the stalled one", metadata: [
                    "export": "\(configuration.exportName)", "address": "\(addresses[newer.0])", "epoch": "\(newer.1)",
                ])
                channel.close(promise: nil)
            }
        }
    }
}

public enum ConnectionError: Error, CustomStringConvertible {
    case noServer(export: String, addresses: [NodeAddress], lastError: String?)

    public var description: String {
        switch self {
        case .noServer(let export, let addresses, let lastError):
            "no active server for export '\(export)' at \(addresses.map(\.description).joined(separator: ", "))"
                + (lastError.map { " (last error: \($0))" } ?? "")
        }
    }
}

/// Inbound side of one connection: the welcome (or refusal), then replies.
private final class ReplyHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message

    private let connection: ServerConnection
    private let welcomed: EventLoopPromise<UInt64>

    init(connection: ServerConnection, welcomed: EventLoopPromise<UInt64>) {
        self.connection = connection
        self.welcomed = welcomed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .welcome(let epoch):
            welcomed.succeed(epoch)
        case .refused(let refusal, let detail):
            connection.refused(refusal, detail: detail)
            welcomed.fail(RefusedError(refusal: refusal, detail: detail))
            context.close(promise: nil)
        case .reply(let sequence, let epoch, let reply):
            connection.received(sequence: sequence, epoch: epoch, reply: reply)
        case .exportAddresses(let addresses, let multipath):
            connection.learned(addresses, multipath: multipath, from: context.channel)
        case .lockLease(let milliseconds):
            connection.toldLockLease(.milliseconds(Int64(milliseconds)))
        default:
            // Nothing else is for a client: whoever sends it is not an export server.
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        welcomed.fail(RefusedError(refusal: .shuttingDown, detail: "connection closed"))
        connection.lost(context.channel, reason: "connection closed")
    }

    /// A TLS failure says why the connection ended (the mount shows it when no server welcomes it).
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        welcomed.fail(RefusedError(refusal: .unauthenticated, detail: TLSFailure.describe(error)))
        context.close(promise: nil)
    }
}

struct RefusedError: Error, CustomStringConvertible {
    var refusal: Refusal
    var detail: String
    var description: String { "refused (\(refusal)): \(detail)" }
}

extension ClientBootstrap {
    /// Connects after resolving on the calling thread. NIO's own resolver runs
    /// on Dispatch, which does not survive the fork of a backgrounded mount.
    public func connect(resolving address: NodeAddress, on eventLoop: EventLoop) -> EventLoopFuture<Channel> {
        do {
            return connect(to: try SocketAddress.makeAddressResolvingHost(address.host, port: address.port))
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }
}

/// Hears the welcome of an epoch probe (see `lookForNewerServer`).
private final class EpochProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message
    var epoch: EventLoopPromise<UInt64>!

    func handlerAdded(context: ChannelHandlerContext) {
        epoch = context.eventLoop.makePromise()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .welcome(let served) = unwrapInboundIn(data) { epoch.succeed(served) } else { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        epoch.fail(RefusedError(refusal: .shuttingDown, detail: "closed"))
    }

    /// Also when the connection never came up: the promise is always completed.
    func handlerRemoved(context: ChannelHandlerContext) {
        epoch.fail(RefusedError(refusal: .shuttingDown, detail: "closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
