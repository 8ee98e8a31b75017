import ArgumentParser
import BatonRuntime

/// `baton cert`: a small CA and the certificates of a test cluster.
struct Cert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a CA and node, client and admin certificates for a test cluster (ECDSA P-256, PEM).",
        discussion: """
            baton cert ca --out DIR                                         writes DIR/ca.pem and DIR/ca.key
            baton cert issue --ca DIR --role node|client|admin --name NAME --out DIR   writes NAME.pem and NAME.key
            The role and name are in the certificate as the URI baton:ROLE:NAME (and the common name is NAME);
            peers read the role from it. Keys are written mode 0600. For production, use your own CA with the same URI.
            """,
        subcommands: [MakeAuthority.self, Issue.self])

    struct MakeAuthority: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ca", abstract: "Make the cluster's CA: ca.pem and ca.key.")

        @Option(help: "The directory to write ca.pem and ca.key in.")
        var out: String

        @Option(help: "The CA's common name.")
        var name = "Baton cluster CA"

        func run() throws {
            do {
                try CertificateAuthority.makeAuthority(name: name, in: out)
            } catch let error as TLSSetupError {
                throw ValidationError(error.description)
            }
            print("\(out)/\(CertificateAuthority.certificateFile)")
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Sign a node, client or admin certificate with the CA.")

        @Option(help: "The CA's directory (from `baton cert ca`).")
        var ca: String

        @Option(help: "node (agents and servers), client (mounts) or admin (status, migrate, ...).")
        var role: PeerRole

        @Option(help: "The name: a node's as in the cluster file; a client's as allow lists will name it.")
        var name: String

        @Option(help: "The directory to write NAME.pem and NAME.key in.")
        var out: String

        func validate() throws {
            guard !name.isEmpty, name.utf8.count <= 255, !name.contains("/"), !name.contains(":"),
                  !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw ValidationError("--name must be 1-255 bytes without '/', ':' or control characters: '\(name)'")
            }
        }

        func run() throws {
            do {
                let paths = try CertificateAuthority.issue(PeerIdentity(role: role, name: name), authority: ca, in: out)
                print(paths.certificate)
            } catch let error as TLSSetupError {
                throw ValidationError(error.description)
            }
        }
    }
}

extension PeerRole: ExpressibleByArgument {}
