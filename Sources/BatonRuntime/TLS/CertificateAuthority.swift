import Crypto
import Foundation
import X509

/// The small certificate authority of `baton cert`: a CA for one test
/// cluster and the node, client and admin certificates it signs. ECDSA
/// P-256, PEM files, private keys readable by their owner only.
public enum CertificateAuthority {
    public static let certificateFile = "ca.pem"
    public static let keyFile = "ca.key"
    /// Long enough for a test cluster to outlive its tests, short enough to be replaced.
    static let authorityLifetime: TimeInterval = 10 * 365 * 86_400
    static let leafLifetime: TimeInterval = 2 * 365 * 86_400
    /// A clock a little behind on another node must not see the certificate as not yet valid.
    static let backdating: TimeInterval = 3600

    /// Writes `ca.pem` and `ca.key` in `directory`; refuses to overwrite a CA.
    public static func makeAuthority(name: String, in directory: String) throws {
        let certificatePath = directory + "/" + certificateFile, keyPath = directory + "/" + keyFile
        for path in [certificatePath, keyPath] where FileManager.default.fileExists(atPath: path) {
            throw TLSSetupError("\(path) exists; a new CA would invalidate every certificate it signed; choose another --out")
        }
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("Baton")
            CommonName(name)
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - backdating, notValidAfter: now + authorityLifetime, issuer: subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        try write(certificate, key: key, certificatePath: certificatePath, keyPath: keyPath)
    }

    /// Signs a certificate for `identity` with the CA in `authority`; writes
    /// NAME.pem and NAME.key in `directory`. Returns the two paths.
    @discardableResult
    public static func issue(_ identity: PeerIdentity, authority: String, in directory: String) throws -> (certificate: String, key: String) {
        let caCertificate = try Certificate(pemEncoded: read(authority + "/" + certificateFile))
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: read(authority + "/" + keyFile))
        let key = P256.Signing.PrivateKey()
        let now = Date()
        // A node serves and connects; a client or an admin only connects.
        let usages: [ExtendedKeyUsage.Usage] = identity.role == .node ? [.serverAuth, .clientAuth] : [.clientAuth]
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - backdating, notValidAfter: now + leafLifetime, issuer: caCertificate.subject,
            subject: try DistinguishedName {
                OrganizationName("Baton")
                CommonName(identity.name)
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage(usages)
                SubjectAlternativeNames([.uniformResourceIdentifier(identity.uri)])
                AuthorityKeyIdentifier(keyIdentifier: try caCertificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(caKey))
        let paths = (certificate: directory + "/" + identity.name + ".pem", key: directory + "/" + identity.name + ".key")
        try write(certificate, key: key, certificatePath: paths.certificate, keyPath: paths.key)
        return paths
    }

    private static func read(_ path: String) throws -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw TLSSetupError("cannot read \(path): \(error.localizedDescription); make the CA with `baton cert ca --out DIR` and give that DIR")
        }
    }

    private static func write(_ certificate: Certificate, key: P256.Signing.PrivateKey, certificatePath: String, keyPath: String) throws {
        try FileManager.default.createDirectory(atPath: (certificatePath as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        // The key is created 0600, never readable by others for an instant.
        let fd = open(keyPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TLSSetupError("cannot create \(keyPath): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        try handle.write(contentsOf: Data((key.pemRepresentation + "\n").utf8))
        _ = fchmod(fd, 0o600)
        try (try certificate.serializeAsPEM().pemString + "\n").write(toFile: certificatePath, atomically: true, encoding: .utf8)
    }
}
