import BatonCore
import Foundation

/// One authenticated request to an agent, with blocking calls: used
/// by the admin CLI and by agents asking each other (fence, status). Short
/// and rare, so a connection per request is fine.
public enum PeerClient {
    /// An agent on a working path accepts at once (its kernel does, even when it is stalled).
    public static let connectTimeoutMilliseconds: Int32 = 500

    /// `tls`: this process's identity on a TLS cluster (a node's or an admin's), nil on plain TCP.
    public static func request(_ request: AgentRequest, to address: NodeAddress, node: String, secret: [UInt8], tls: TLSIdentity?,
                               timeoutMilliseconds: Int32 = 2000) throws -> (ok: Bool, text: String) {
        try self.request(request, toAnyOf: [address], node: node, secret: secret, tls: tls, timeoutMilliseconds: timeoutMilliseconds)
    }

    /// The same, to the first of `addresses` (one agent's addresses, one per
    /// network path) that accepts the connection: with a path down, the
    /// request goes over the other. Once connected it is sent there alone,
    /// so a request is never carried out twice.
    public static func request(_ request: AgentRequest, toAnyOf addresses: [NodeAddress], node: String, secret: [UInt8],
                               tls: TLSIdentity?, timeoutMilliseconds: Int32 = 2000) throws -> (ok: Bool, text: String) {
        var failures: [String] = []
        for address in addresses {
            let connection: BlockingConnection
            do {
                connection = try BlockingConnection(address, timeoutMilliseconds: timeoutMilliseconds,
                                                    connectTimeoutMilliseconds: connectTimeoutMilliseconds, tls: tls)
            } catch {
                failures.append("\(error)")
                continue
            }
            return try exchange(request, on: connection, node: node, secret: secret, plain: tls == nil)
        }
        throw ProbeError(failures.joined(separator: "; "))
    }

    private static func exchange(_ request: AgentRequest, on connection: BlockingConnection, node: String,
                                 secret: [UInt8], plain: Bool) throws -> (ok: Bool, text: String) {
        let address = connection.address
        let first: Message
        do {
            first = try connection.receive()
        } catch where plain {
            // A TLS agent waits for a ClientHello and says nothing to a plain connection.
            throw ProbeError("\(address) sent no challenge over plain TCP (\(error)): if the cluster file has [tls], its agents take TLS "
                             + "only; give admin_cert and admin_key in [tls], or --tls-cert, --tls-key and --tls-ca")
        }
        guard case .challenge(let nonce) = first else {
            throw ProbeError("\(address) did not challenge: it is not a Baton agent")
        }
        try connection.send(.authenticate(node: node, proof: AgentAuthentication.proof(.hmacSHA256(secret: secret), nonce: nonce, node: node)))
        try connection.send(.agentRequest(request))
        switch try connection.receive() {
        case .agentReply(let ok, let text): return (ok, text)
        case .refused(let refusal, let detail): throw ProbeError("\(address) refused (\(refusal)): \(detail)")
        default: throw ProbeError("\(address) answered with an unexpected message")
        }
    }
}

/// How a peer proves it holds the cluster's shared secret.
public enum AgentAuthentication {
    public static func proof(_ authenticator: MessageAuthenticator, nonce: [UInt8], node: String) -> [UInt8] {
        authenticator.code(nonce + Array(node.utf8))
    }
}
