import BatonCore
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// Which roles a listener or a connection takes, and how its refusals are logged.
public struct RolePolicy: Sendable {
    public var accepted: Set<PeerRole>
    /// What the peer reached, for messages: "the export's client port".
    public var place: String
    /// Logs one refusal (the owner rate-limits by `kind`): what was refused and the peer's address.
    public var log: @Sendable (_ kind: String, _ detail: String, _ peer: String) -> Void

    public init(accepting accepted: Set<PeerRole>, place: String,
                log: @escaping @Sendable (_ kind: String, _ detail: String, _ peer: String) -> Void) {
        self.accepted = accepted
        self.place = place
        self.log = log
    }

    /// A connection to a node's server or agent: the other end must be a node.
    public static let nodeServer = RolePolicy(accepting: [.node], place: "a client of a node", log: { _, _, _ in })

    var needed: String { accepted.map(\.rawValue).sorted().joined(separator: " or ") }
}

/// Fired up the pipeline once the peer's certificate is checked: who it is.
public struct PeerVerified: Sendable {
    public let identity: PeerIdentity
}

/// The refusal a connecting side sees when the other end holds the wrong role.
public struct PeerRoleRefused: Error, CustomStringConvertible {
    public let description: String
}

/// After the TLS handshake: reads the peer's role from its certificate (the
/// CA has verified it already) and lets the connection on only when the
/// policy takes that role. A server refuses with a Baton `refused` message
/// that names the role presented and the one needed, then closes; a
/// connecting side fails with `PeerRoleRefused`. Nothing passes before.
final class PeerRoleGate: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Side { case server, client }

    private let policy: RolePolicy
    private let side: Side
    private var verified = false

    init(policy: RolePolicy, side: Side) {
        self.policy = policy
        self.side = side
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case TLSUserEvent.handshakeCompleted = event else { return context.fireUserInboundEventTriggered(event) }
        context.fireUserInboundEventTriggered(event)
        let identity: PeerIdentity
        do {
            guard let certificate = try context.pipeline.syncOperations.nioSSL_peerCertificate() else {
                return refuse(context, "no certificate was presented; \(policy.place) takes \(policy.needed) certificates")
            }
            identity = try PeerIdentity(certificate: certificate)
        } catch {
            return refuse(context, "\(error)")
        }
        guard policy.accepted.contains(identity.role) else {
            return refuse(context, "\(identity.role) certificate '\(identity.name)' presented; \(policy.place) takes \(policy.needed) certificates only")
        }
        verified = true
        context.fireUserInboundEventTriggered(PeerVerified(identity: identity))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if verified { context.fireChannelRead(data) }
    }

    private func refuse(_ context: ChannelHandlerContext, _ detail: String) {
        let peer = context.remoteAddress.map { "\($0)" } ?? "?"
        policy.log("certificate", detail, peer)
        switch side {
        case .server:
            let channel = context.channel
            context.writeAndFlush(NIOAny(Message.refused(.unauthenticated, detail: detail).frame(allocator: channel.allocator)))
                .whenComplete { _ in channel.close(promise: nil) }
        case .client:
            context.fireErrorCaught(PeerRoleRefused(description: "\(peer) refused: \(detail)"))
            context.close(promise: nil)
        }
    }
}

/// First on a TLS listener: a connection whose first bytes are not a TLS
/// record (a mount without `-o cert,key,ca`, a plain-TCP agent) gets a plain
/// Baton refusal that says what to give, instead of a handshake error it
/// cannot read. A TLS record starts 0x16 0x03; a Baton frame starts with its
/// length, little-endian, whose second byte is 0 for every hello.
final class PlaintextRefusal: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let policy: RolePolicy
    private var head: ByteBuffer?

    init(policy: RolePolicy) { self.policy = policy }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var held = head {
            held.writeBuffer(&buffer)
            buffer = held
        }
        guard buffer.readableBytes >= 2, let first = buffer.getBytes(at: buffer.readerIndex, length: 2) else {
            head = buffer
            return
        }
        head = nil
        if first == [0x16, 0x03] {
            context.fireChannelRead(wrapInboundOut(buffer))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        let detail = "this port takes TLS only: give the cluster's CA and a certificate"
            + (policy.accepted.contains(.client) ? " (mount with -o cert=PATH,key=PATH,ca=PATH)" : " (the [tls] table of the cluster file)")
        policy.log("plaintext", "a connection without TLS: \(detail)", context.remoteAddress.map { "\($0)" } ?? "?")
        let channel = context.channel
        context.writeAndFlush(NIOAny(Message.refused(.unauthenticated, detail: detail).frame(allocator: channel.allocator)))
            .whenComplete { _ in channel.close(promise: nil) }
    }
}
