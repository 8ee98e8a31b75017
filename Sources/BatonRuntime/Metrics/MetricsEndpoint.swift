import BatonCore
import CoreMetrics
import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// This process's metrics: swift-metrics handlers (the counters, gauges and
/// timers of the server and agent code) kept in a Prometheus registry.
public enum ProcessMetrics {
    private static let lock = NIOLock()
    nonisolated(unsafe) private static var bootstrapped: PrometheusCollectorRegistry?

    /// Sets the process's metrics factory, once: series made before it count nowhere.
    /// Request latencies are sub-millisecond: the buckets start at 50 µs.
    public static func bootstrap() {
        lock.withLock {
            if bootstrapped != nil { return }
            let registry = PrometheusCollectorRegistry()
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.defaultDurationHistogramBuckets = [
                .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
                .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
            ]
            MetricsSystem.bootstrap(factory)
            bootstrapped = registry
        }
    }

    /// Whether series count anywhere: a process without it skips metering its hot path.
    public static var isBootstrapped: Bool { lock.withLock { bootstrapped != nil } }

    /// Every series of this process, in the text format (empty before `bootstrap`).
    public static func page() -> String { lock.withLock { bootstrapped }?.emitToString() ?? "" }
}

/// `GET /metrics` over HTTP/1.1 on its own thread: a scrape never waits
/// for, nor delays, the data path. `page` may block (an agent asks its
/// servers); it runs off the event loop.
public final class MetricsEndpoint: @unchecked Sendable {
    public let address: NodeAddress
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: any Channel

    /// Connections at once (Prometheus keeps one per target); a new one past
    /// this closes the oldest, so idle connections cannot lock a scraper out.
    public static let maxConnections = 16
    /// A connection with no request this long is closed.
    public static let idleTimeout = TimeAmount.seconds(60)

    public init(listen: NodeAddress, logger: Logger, page: @escaping @Sendable () -> String) throws {
        // The open connections, oldest first.
        let open = NIOLockedValueBox<[(id: ObjectIdentifier, channel: any Channel)]>([])
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                let oldest = open.withLockedValue { open -> (any Channel)? in
                    open.append((id, channel))
                    return open.count > Self.maxConnections ? open.removeFirst().channel : nil
                }
                oldest?.close(promise: nil)
                channel.closeFuture.whenComplete { _ in open.withLockedValue { $0.removeAll { $0.id == id } } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandlers([
                        IdleStateHandler(readTimeout: Self.idleTimeout), MetricsRequestHandler(page: page),
                    ])
                }
            }
        do {
            channel = try bootstrap.bind(host: listen.host, port: listen.port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw ProbeError("cannot serve metrics on \(listen): \(error)")
        }
        address = NodeAddress(host: listen.host, port: channel.localAddress?.port ?? listen.port)
        logger.info("serving metrics", metadata: ["address": "\(address)", "path": "/metrics"])
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// The body of `GET /metrics` at `address`, or nil (with why) when it does not answer in time.
    public static func scrape(_ address: NodeAddress, timeoutMilliseconds: Int32 = 1000) -> Result<String, ProbeError> {
        do {
            let connection = try BlockingConnection(address, timeoutMilliseconds: timeoutMilliseconds)
            try connection.send(bytes: Array("GET /metrics HTTP/1.0\r\nHost: \(address)\r\n\r\n".utf8))
            let response = String(decoding: try connection.receiveToEnd(limitBytes: 16 << 20), as: UTF8.self)
            guard let split = response.range(of: "\r\n\r\n") else { return .failure(ProbeError("\(address): no HTTP answer")) }
            guard response.hasPrefix("HTTP/1.1 200") || response.hasPrefix("HTTP/1.0 200") else {
                return .failure(ProbeError("\(address): \(response[..<(response.range(of: "\r\n")?.lowerBound ?? split.lowerBound)])"))
            }
            return .success(String(response[split.upperBound...]))
        } catch let error as ProbeError {
            return .failure(error)
        } catch {
            return .failure(ProbeError("\(address): \(error)"))
        }
    }
}

private final class MetricsRequestHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let page: @Sendable () -> String
    private var head: HTTPRequestHead?

    init(page: @escaping @Sendable () -> String) { self.page = page }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request): head = request
        case .body: break
        case .end:
            guard let request = head else { return }
            head = nil
            let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
            guard request.method == .GET || request.method == .HEAD else {
                return respond(context, request, .methodNotAllowed, "only GET /metrics is served\n")
            }
            guard path == "/metrics" else { return respond(context, request, .notFound, "metrics are at /metrics\n") }
            let page = page
            let loop = context.eventLoop
            let bound = NIOLoopBound(context, eventLoop: loop)
            DispatchQueue.global().async {
                let body = page()
                loop.execute { self.respond(bound.value, request, .ok, body, contentType: MetricsExposition.contentType) }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: String,
                         contentType: String = "text/plain; charset=utf-8") {
        guard context.channel.isActive else { return }
        let bytes = Array(body.utf8)
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(bytes.count)")])
        let keepAlive = request.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: bytes)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
