import NIOCore
import NIOSSL

/// Paths of the PEM files one process presents and trusts.
public struct TLSFiles: Hashable, Sendable {
    public var certificate: String
    public var key: String
    public var authority: String

    public init(certificate: String, key: String, authority: String) {
        self.certificate = certificate
        self.key = key
        self.authority = authority
    }
}

/// This process's certificate, key and the cluster's CA, loaded once: the TLS
/// contexts of its listeners and connections. TLS 1.3 only; both sides
/// present certificates of the CA (mutual TLS). Host names are not checked:
/// nodes are reached by address, and who a peer is comes from the role in its
/// certificate (`PeerIdentity`), checked by `PeerRoleGate`.
public final class TLSIdentity: Sendable {
    public let files: TLSFiles
    /// Who this process is, by its own certificate.
    public let identity: PeerIdentity
    let serverContext: NIOSSLContext
    let clientContext: NIOSSLContext

    /// Loads the files; `roles` are those this process may hold (an agent: node).
    public init(_ files: TLSFiles, roles: Set<PeerRole>) throws {
        self.files = files
        let chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, authority: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(files.certificate) } catch {
            throw TLSSetupError("cannot load the certificate \(files.certificate): \(error); give a PEM certificate made by `baton cert issue`")
        }
        do { key = try NIOSSLPrivateKey(file: files.key, format: .pem) } catch {
            throw TLSSetupError("cannot load the private key \(files.key): \(error); give the PEM key made with the certificate")
        }
        do { authority = try NIOSSLCertificate.fromPEMFile(files.authority) } catch {
            throw TLSSetupError("cannot load the CA certificate \(files.authority): \(error); give the cluster's ca.pem from `baton cert ca`")
        }
        guard let leaf = chain.first, !authority.isEmpty else {
            throw TLSSetupError("\(chain.isEmpty ? files.certificate : files.authority) holds no certificate")
        }
        identity = try PeerIdentity(certificate: leaf)
        guard roles.contains(identity.role) else {
            throw TLSSetupError("\(files.certificate) is a \(identity.role) certificate ('\(identity.name)'); this needs a "
                + roles.map(\.rawValue).sorted().joined(separator: " or ") + " certificate")
        }
        func configuration(_ base: TLSConfiguration) -> TLSConfiguration {
            var configuration = base
            configuration.minimumTLSVersion = .tlsv13
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .certificates(authority)
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(key)
            return configuration
        }
        do {
            serverContext = try NIOSSLContext(configuration: configuration(
                .makeServerConfigurationWithMTLS(certificateChain: [], privateKey: .privateKey(key), trustRoots: .certificates(authority))))
            clientContext = try NIOSSLContext(configuration: configuration(.makeClientConfiguration()))
        } catch {
            throw TLSSetupError("cannot use \(files.certificate) with \(files.key): \(error); do they belong together?")
        }
    }

    /// The TLS handlers first in a pipeline that accepted a connection:
    /// a plain Baton client is answered in plain words (`PlaintextRefusal`).
    public func addServerHandlers(to pipeline: ChannelPipeline.SynchronousOperations, accepting policy: RolePolicy) throws {
        try pipeline.addHandler(PlaintextRefusal(policy: policy))
        try pipeline.addHandler(NIOSSLServerHandler(context: serverContext))
        try pipeline.addHandler(PeerRoleGate(policy: policy, side: .server))
    }

    /// The TLS handlers first in a pipeline that connects to a node.
    public func addClientHandlers(to pipeline: ChannelPipeline.SynchronousOperations, accepting policy: RolePolicy = .nodeServer) throws {
        try pipeline.addHandler(NIOSSLClientHandler(context: clientContext, serverHostname: nil))
        try pipeline.addHandler(PeerRoleGate(policy: policy, side: .client))
    }
}

extension Optional where Wrapped == TLSIdentity {
    /// TLS handlers for an accepted connection when there is an identity; none on a plain-TCP cluster.
    public func addServerHandlers(to pipeline: ChannelPipeline.SynchronousOperations, accepting policy: RolePolicy) throws {
        try self?.addServerHandlers(to: pipeline, accepting: policy)
    }

    public func addClientHandlers(to pipeline: ChannelPipeline.SynchronousOperations, accepting policy: RolePolicy = .nodeServer) throws {
        try self?.addClientHandlers(to: pipeline, accepting: policy)
    }
}
