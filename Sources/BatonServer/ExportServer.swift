import BatonCore
import BatonRuntime
import Logging
import NIOCore
import NIOPosix

/// The export server (`baton serve`): owns one export's namespace while
/// active, applies client operations in one order on its export thread,
/// journals every mutation before it answers.
public final class ExportServer: @unchecked Sendable {
    public let exportName: String
    private let store: ExportStore
    private let logger: Logger
    /// The one thread that touches the namespace and the journal: mutations
    /// are applied in a single order, which is the journal's order.
    private let exportThread: MultiThreadedEventLoopGroup
    private let network: MultiThreadedEventLoopGroup
    private var listener: Channel?
    private var failed = false

    public init(exportName: String, store: ExportStore, logger: Logger) {
        self.exportName = exportName
        self.store = store
        self.logger = logger
        self.exportThread = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.network = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    }

    /// Starts listening; returns the bound address (useful with port 0).
    public func start(listen address: NodeAddress) throws -> NodeAddress {
        let bootstrap = ServerBootstrap(group: network)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(MessageDecoder()))
                    try channel.pipeline.syncOperations.addHandler(ClientConnectionHandler(server: self))
                }
            }
        let channel = try bootstrap.bind(host: address.host, port: address.port).wait()
        listener = channel
        let port = channel.localAddress?.port ?? address.port
        logger.info("export server listening", metadata: [
            "export": "\(exportName)", "address": "\(address.host):\(port)", "epoch": "\(store.epoch)",
        ])
        return NodeAddress(host: address.host, port: port)
    }

    /// Blocks until `stop` is called.
    public func wait() throws {
        try listener?.closeFuture.wait()
    }

    public func stop() {
        _ = try? exportThread.next().submit { [self] in
            do {
                try store.sync()
            } catch {
                logger.error("final journal sync failed", metadata: ["export": "\(exportName)", "error": "\(error)"])
            }
        }.wait()
        try? listener?.close().wait()
        try? network.syncShutdownGracefully()
        try? exportThread.syncShutdownGracefully()
        logger.info("export server stopped", metadata: ["export": "\(exportName)"])
    }

    var epoch: UInt64 { store.epoch }

    /// Runs one request on the export thread and hands back its reply.
    func handle(_ operation: Operation, session: UInt64, sequence: UInt64, oldestUnanswered: UInt64,
                allocator: ByteBufferAllocator) -> EventLoopFuture<ByteBuffer> {
        exportThread.next().submit { [self] in
            frame(sequence: sequence, reply: perform(operation, session: session, sequence: sequence,
                                                     oldestUnanswered: oldestUnanswered, allocator: allocator),
                  allocator: allocator)
        }
    }

    private enum Answer {
        case reply(Reply)
        /// Read data, already framed (pread went straight into the frame).
        case frame(ByteBuffer)
    }

    private func perform(_ operation: Operation, session: UInt64, sequence: UInt64, oldestUnanswered: UInt64,
                         allocator: ByteBufferAllocator) -> Answer {
        if failed { return .reply(.error(.EIO)) }
        store.forgetReplies(session: session, below: oldestUnanswered)
        if operation.isMutation {
            if let cached = store.namespace.cachedReply(session: session, request: sequence) { return .reply(cached) }
            do {
                return .reply(try store.apply(operation, session: session, requestSequence: sequence))
            } catch {
                fail(error)
                return .reply(.error(.EIO))
            }
        }
        switch operation {
        case .read(let ino, _, let offset, let size):
            return read(ino, offset: offset, size: size, sequence: sequence, allocator: allocator)
        case .fsync:
            do {
                try store.sync()
                return .reply(.done)
            } catch {
                fail(error)
                return .reply(.error(.EIO))
            }
        case .statfs:
            do {
                var statistics = try store.statistics()
                statistics.totalInodes = max(statistics.totalInodes, UInt64(store.namespace.inodeCount))
                return .reply(.statfs(statistics))
            } catch {
                logger.warning("statfs failed", metadata: ["export": "\(exportName)", "error": "\(error)"])
                return .reply(.error(.EIO))
            }
        default:
            return .reply(store.namespace.query(operation))
        }
    }

    private func read(_ ino: InodeNumber, offset: UInt64, size: UInt32, sequence: UInt64, allocator: ByteBufferAllocator) -> Answer {
        let fileSize: UInt64
        do {
            fileSize = try store.namespace.readableSize(ino)
        } catch {
            return .reply(.error(error))
        }
        let count = Int(min(UInt64(min(size, UInt32(WireLimits.maxDataBytes))), fileSize > offset ? fileSize - offset : 0))
        var buffer = allocator.buffer(capacity: 64 + count)
        buffer.writeInteger(UInt32(0), endianness: .little)
        buffer.writeInteger(UInt8(5), endianness: .little) // Message tag: reply
        buffer.writeInteger(sequence, endianness: .little)
        buffer.writeInteger(store.epoch, endianness: .little)
        buffer.writeInteger(UInt8(8), endianness: .little) // Reply tag: bytes
        buffer.writeInteger(UInt32(count), endianness: .little)
        do {
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
                try store.read(ino, offset: offset, count: count, into: raw)
            }
        } catch {
            logger.error("read of file data failed", metadata: ["export": "\(exportName)", "inode": "\(ino)", "error": "\(error)"])
            return .reply(.error(.EIO))
        }
        buffer.setInteger(UInt32(buffer.readableBytes - 4), at: 0, endianness: .little)
        return .frame(buffer)
    }

    private func frame(sequence: UInt64, reply answer: Answer, allocator: ByteBufferAllocator) -> ByteBuffer {
        switch answer {
        case .frame(let buffer):
            return buffer
        case .reply(let reply):
            return Message.reply(sequence: sequence, epoch: store.epoch, reply).frame(allocator: allocator)
        }
    }

    /// The journal can no longer be written: answer nothing more, stop, and
    /// let a restart replay what the disk holds.
    private func fail(_ error: any Error) {
        failed = true
        logger.critical("export server stops: the journal cannot be written", metadata: [
            "export": "\(exportName)", "directory": "\(store.directory)", "error": "\(error)",
            "action": "free space or fix the disk under the data directory, then restart the server",
        ])
        _ = listener?.close()
    }

    func refuseLog(_ message: String, peer: String, detail: String) {
        logger.warning("\(message)", metadata: ["export": "\(exportName)", "peer": "\(peer)", "detail": "\(detail)"])
    }
}

/// One client connection: the hello handshake, then requests handed to the
/// export thread. Anything malformed ends this connection, never the server.
final class ClientConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = Message
    typealias OutboundOut = ByteBuffer

    private let server: ExportServer
    private var session: UInt64?

    init(server: ExportServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        switch message {
        case .hello(let export, let session, let version):
            guard version == Message.protocolVersion else {
                refuse(context, .badVersion, "protocol version \(version) is not supported (this server speaks \(Message.protocolVersion))")
                return
            }
            guard export == server.exportName else {
                refuse(context, .unknownExport, "this server serves export '\(server.exportName)', not '\(export)'")
                return
            }
            self.session = session
            context.writeAndFlush(wrapOutboundOut(Message.welcome(epoch: server.epoch).frame(allocator: context.channel.allocator)), promise: nil)
        case .request(let sequence, let oldest, let operation):
            guard let session else {
                refuse(context, .malformed, "request before hello")
                return
            }
            let channel = context.channel
            server.handle(operation, session: session, sequence: sequence, oldestUnanswered: oldest,
                          allocator: channel.allocator).whenSuccess { frame in
                channel.writeAndFlush(frame, promise: nil)
            }
        case .welcome, .refused, .reply:
            refuse(context, .malformed, "unexpected message from a client")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, .malformed, "\(error)")
    }

    private func refuse(_ context: ChannelHandlerContext, _ refusal: Refusal, _ detail: String) {
        server.refuseLog("client refused", peer: "\(context.remoteAddress.map { "\($0)" } ?? "?")", detail: detail)
        let channel = context.channel
        channel.writeAndFlush(Message.refused(refusal, detail: detail).frame(allocator: channel.allocator)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}
