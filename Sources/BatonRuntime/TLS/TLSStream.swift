import BatonCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// A TLS connection for `BlockingConnection`'s blocking calls: a NIO channel
/// (NIOSSL works only in a pipeline) on one shared event loop, whose handler
/// queues the bytes received for the caller's thread to take.
final class TLSStream: @unchecked Sendable {
    /// Admin requests and agents' questions are short and rare: one thread serves them all.
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    private let channel: Channel
    private let inbox: Inbox
    private let address: NodeAddress
    private let timeout: TimeAmount

    init(_ address: NodeAddress, identity: TLSIdentity, timeoutMilliseconds: Int32, connectTimeoutMilliseconds: Int32) throws {
        self.address = address
        timeout = .milliseconds(Int64(timeoutMilliseconds))
        let inbox = Inbox()
        self.inbox = inbox
        do {
            channel = try ClientBootstrap(group: Self.group)
                .connectTimeout(.milliseconds(Int64(connectTimeoutMilliseconds)))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try identity.addClientHandlers(to: channel.pipeline.syncOperations)
                        try channel.pipeline.syncOperations.addHandler(InboxHandler(inbox: inbox))
                    }
                }
                .connect(resolving: address, on: Self.group.next())
                .wait()
        } catch {
            throw ProbeError("connect to \(address): \(error)")
        }
    }

    deinit { channel.close(promise: nil) }

    /// Once the peer has closed (a refusal, then the close), what is sent is
    /// dropped: the caller's next receive reads the refusal, which says more
    /// than "closed channel".
    func send(_ bytes: [UInt8]) throws {
        if inbox.hasEnded { return }
        // A peer that reads nothing must not hold the caller forever.
        let channel = channel
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        do {
            try channel.writeAndFlush(channel.allocator.buffer(bytes: bytes)).wait()
        } catch {
            if inbox.hasEnded { return }
            throw ProbeError("send to \(address): \(error)")
        }
    }

    /// Up to `limit` bytes; none at the peer's end of the stream.
    func receive(upTo limit: Int) throws -> [UInt8] {
        switch inbox.take(upTo: limit, within: timeout) {
        case .bytes(let bytes): return bytes
        case .end: return []
        case .failed(let reason): throw ProbeError("no answer from \(address): \(reason)")
        case .timedOut: throw ProbeError("no answer from \(address) within \(timeout)")
        }
    }
}

/// Bytes received and how the stream ended, for a thread that waits for them.
private final class Inbox: @unchecked Sendable {
    enum Taken { case bytes([UInt8]), end, failed(String), timedOut }

    /// True when there is something to take: bytes or the end.
    private let condition = ConditionLock(value: false)
    private var bytes: [UInt8] = []
    private var ended = false
    private var failure: String?

    var hasEnded: Bool {
        condition.lock()
        defer { condition.unlock() }
        return ended
    }

    func append(_ buffer: ByteBuffer) {
        condition.lock()
        bytes += buffer.readableBytesView
        condition.unlock(withValue: true)
    }

    /// The first reason given wins: a handshake's error says more than the close after it.
    func finish(failure reason: String?) {
        condition.lock()
        if !ended {
            ended = true
            failure = reason
        }
        condition.unlock(withValue: true)
    }

    func take(upTo limit: Int, within timeout: TimeAmount) -> Taken {
        guard condition.lock(whenValue: true, timeoutSeconds: Double(timeout.nanoseconds) / 1e9) else { return .timedOut }
        let taken: Taken
        if !bytes.isEmpty {
            let count = min(limit, bytes.count)
            taken = .bytes(Array(bytes[..<count]))
            bytes.removeFirst(count)
        } else {
            taken = failure.map { .failed($0) } ?? .end
        }
        condition.unlock(withValue: !bytes.isEmpty || ended)
        return taken
    }
}

private final class InboxHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let inbox: Inbox

    init(inbox: Inbox) { self.inbox = inbox }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { inbox.append(unwrapInboundIn(data)) }

    func channelInactive(context: ChannelHandlerContext) { inbox.finish(failure: nil) }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbox.finish(failure: TLSFailure.describe(error))
        context.close(promise: nil)
    }
}

/// A TLS error in words an admin can act on.
public enum TLSFailure {
    /// The TLS layer's own error (a handshake with a certificate of another CA, a torn session).
    public static func isTLS(_ error: any Error) -> Bool { error is NIOSSLError }

    public static func describe(_ error: any Error) -> String {
        guard let error = error as? NIOSSLError else { return "\(error)" }
        switch error {
        case .handshakeFailed(let reasons):
            let text = "\(reasons)"
            if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("UNKNOWN_CA") || text.contains("BAD_CERTIFICATE") {
                return "TLS handshake failed: the certificates are not of one CA (\(text)); give the cluster's CA and a certificate it signed"
            }
            if text.contains("CERTIFICATE_REQUIRED") {
                return "TLS handshake failed: no certificate was presented (\(text)); give a certificate of the cluster's CA"
            }
            return "TLS handshake failed: \(text)"
        case .uncleanShutdown: return "the peer closed the TLS connection without a TLS close (it may have refused the certificate)"
        default: return "TLS: \(error)"
        }
    }
}
