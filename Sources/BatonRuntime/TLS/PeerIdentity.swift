import NIOSSL
import X509

/// What a certificate lets its holder do in the cluster. Nodes run agents
/// and servers; clients mount; admins run the admin commands.
public enum PeerRole: String, Sendable, CaseIterable, CustomStringConvertible {
    case node, client, admin

    public var description: String { rawValue }
}

/// Who a certificate names: its role and name, written in the certificate as
/// the subject alternative name URI `baton:ROLE:NAME` (the subject's common
/// name is NAME too, for people reading it with openssl). A URI rather than
/// an extension of our own: every X.509 tool shows it, and the name stays
/// where the next step (per-export allow lists) reads a client's name.
public struct PeerIdentity: Hashable, Sendable, CustomStringConvertible {
    public var role: PeerRole
    public var name: String

    public static let scheme = "baton"

    public init(role: PeerRole, name: String) {
        self.role = role
        self.name = name
    }

    public var uri: String { "\(Self.scheme):\(role):\(name)" }
    public var description: String { "\(role) '\(name)'" }

    /// `baton:ROLE:NAME`, or nil.
    public init?(uri: String) {
        let parts = uri.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == Self.scheme, let role = PeerRole(rawValue: String(parts[1])), !parts[2].isEmpty else {
            return nil
        }
        self.init(role: role, name: String(parts[2]))
    }

    /// The one Baton identity a certificate names.
    public init(certificate: Certificate) throws {
        let names = (try? certificate.extensions.subjectAlternativeNames) ?? nil
        let identities = (names.map(Array.init) ?? []).compactMap { name -> PeerIdentity? in
            guard case .uniformResourceIdentifier(let uri) = name else { return nil }
            return PeerIdentity(uri: uri)
        }
        guard identities.count == 1 else {
            throw TLSSetupError(identities.isEmpty
                ? "the certificate of '\(certificate.subject)' names no Baton role: it needs a subject alternative name URI baton:ROLE:NAME (make it with `baton cert issue`)"
                : "the certificate of '\(certificate.subject)' names \(identities.count) Baton roles; it must name one")
        }
        self = identities[0]
    }

    public init(certificate: NIOSSLCertificate) throws {
        try self.init(certificate: Certificate(derEncoded: certificate.toDERBytes()))
    }
}

/// A certificate, key or CA that cannot be used, with the path and what to do.
public struct TLSSetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
