// Goal: on a cluster with [tls], every TCP connection is mutual TLS 1.3 with
// certificates from `baton cert`, and each listener takes only the roles it
// is for: a mount with a client certificate reads, writes and follows a
// failover and a migration; admin commands work with the admin certificate;
// a mount without a certificate or with one of another CA is refused with
// its reason, and so are a client certificate at an agent's port (admin
// request or replication) and an admin certificate that fences or opens a
// replica session. A plain-TCP cluster says so at start.
// Method: real agents and servers (TwoNodeCluster), a real FUSE mount, raw
// TLS sessions through BlockingConnection presenting a chosen certificate.
import BatonCore
import BatonRuntime
import Foundation
import XCTest

final class TLSTests: XCTestCase {
    func testBatonCertMakesCertificatesThatNIOSSLLoadsWithTheirRole() throws {
        let directory = try temporaryDirectory(self) + "/tls"
        try makeCertificates(in: directory, [("node", "a"), ("client", "laptop"), ("admin", "ops")])
        for (name, role) in [("a", PeerRole.node), ("laptop", .client), ("ops", .admin)] {
            let identity = try TLSIdentity(files(directory, name), roles: [role])
            XCTAssertEqual(identity.identity, PeerIdentity(role: role, name: name))
            let mode = try FileManager.default.attributesOfItem(atPath: "\(directory)/\(name).key")[.posixPermissions] as? Int
            XCTAssertEqual(mode, 0o600, "the private key of \(name) is readable by others")
        }
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: directory + "/ca.key")[.posixPermissions] as? Int, 0o600)
        XCTAssertThrowsError(try TLSIdentity(files(directory, "laptop"), roles: [.node])) { error in
            XCTAssertTrue("\(error)".contains("is a client certificate ('laptop'); this needs a node certificate"), "\(error)")
        }
    }

    func testATLSClusterServesAMountThroughAFailoverAndAMigration() throws {
        let cluster = try TwoNodeCluster(self, tls: true)
        XCTAssertFalse(cluster.logs.contains("plain TCP"), cluster.logs)
        let mount = try cluster.mount(self, "demo", options: [cluster.tlsMountOptions()])
        let file = mount.mountpoint + "/before"
        try Data("written over TLS".utf8).write(to: URL(fileURLWithPath: file))
        let before = try XCTUnwrap(try cluster.server("demo"))
        XCTAssertEqual(before.node, "a")
        kill(before.pid, SIGSTOP)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        XCTAssertEqual(try cluster.server("demo")?.node, "b", cluster.logs)
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "written over TLS")
        try Data("after the failover".utf8).write(to: URL(fileURLWithPath: mount.mountpoint + "/after"))
        let migrated = try cluster.admin(["migrate", "demo"])
        XCTAssertEqual(migrated.status, 0, migrated.output)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 2)
        XCTAssertEqual(try cluster.server("demo")?.node, "a", cluster.logs)
        XCTAssertEqual(try String(contentsOfFile: mount.mountpoint + "/after", encoding: .utf8), "after the failover")
        let status = try cluster.admin(["status"])
        XCTAssertEqual(status.status, 0, status.output)
        try cluster.stopAllInStep("demo", unmounting: mount)
        try cluster.assertSameFiles("demo")
    }

    func testATLSClusterRefusesWrongCertificatesWithTheirReason() throws {
        let cluster = try TwoNodeCluster(self, tls: true)
        let port = try XCTUnwrap(cluster.exports.first?.port)
        let source = "demo@127.0.0.1:\(port)"
        let mountpoint = cluster.directory + "/refused"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)

        let plain = try runCommand(BatonBinary.path, ["mount", source, mountpoint, "-f"])
        XCTAssertNotEqual(plain.status, 0, plain.output)
        XCTAssertTrue(plain.output.contains("this port takes TLS only") && plain.output.contains("-o cert=PATH,key=PATH,ca=PATH"), plain.output)
        try waitFor("the server logs the plain connection", cluster) { $0.contains("a connection without TLS") }

        let other = cluster.directory + "/other-ca"
        try makeCertificates(in: other, [("client", "client")])
        let foreign = try runCommand(BatonBinary.path, ["mount", source, mountpoint, "-f", "-o",
                                                        "cert=\(other)/client.pem,key=\(other)/client.key,ca=\(other)/ca.pem"])
        XCTAssertNotEqual(foreign.status, 0, foreign.output)
        XCTAssertTrue(foreign.output.contains("not of one CA"), foreign.output)
        XCTAssertFalse(MountProcess.isMounted(mountpoint))
        try waitFor("the server logs the failed handshake", cluster) { $0.contains("TLS session failed") && $0.contains("not of one CA") }

        let tls = cluster.tlsDirectory
        let agent = try XCTUnwrap(cluster.agentAddresses["a"])
        let client = try TLSIdentity(files(tls, "client"), roles: [.client])
        let admin = try TLSIdentity(files(tls, "admin"), roles: [.admin])
        let secret = Array(try Data(contentsOf: URL(fileURLWithPath: cluster.directory + "/secret")))

        // A client certificate at the agent's port: an admin request, and a replica session.
        XCTAssertThrowsError(try PeerClient.request(.status, to: agent, node: "admin", secret: secret, tls: client)) { error in
            XCTAssertTrue("\(error)".contains("client certificate 'client' presented; the agent's port takes admin or node certificates only"), "\(error)")
        }
        let replication = try replicaSession(to: agent, presenting: client, secret: secret)
        XCTAssertTrue(replication.contains("client certificate 'client' presented; the agent's port takes admin or node certificates only"), replication)
        try waitFor("the agent logs the client certificate refused, with the peer's address", cluster) {
            $0.contains("agent connection refused") && $0.contains("client certificate 'client' presented") && $0.contains("127.0.0.1:")
        }

        // An admin command over plain TCP: the agent says nothing until a TLS handshake; the command says why it got nothing.
        XCTAssertThrowsError(try PeerClient.request(.status, to: agent, node: "admin", secret: secret, tls: nil)) { error in
            XCTAssertTrue("\(error)".contains("sent no challenge over plain TCP") && "\(error)".contains("give admin_cert and admin_key"), "\(error)")
        }

        // An admin certificate may ask for status, but neither fence nor replicate.
        XCTAssertTrue(try PeerClient.request(.status, to: agent, node: "admin", secret: secret, tls: admin).ok)
        XCTAssertThrowsError(try PeerClient.request(.fence(export: "demo", epoch: 1), to: agent, node: "admin", secret: secret, tls: admin)) { error in
            XCTAssertTrue("\(error)".contains("admin certificate 'admin' presented; a fence takes node certificates only"), "\(error)")
        }
        let adminReplication = try replicaSession(to: agent, presenting: admin, secret: secret)
        XCTAssertTrue(adminReplication.contains("admin certificate 'admin' presented; a replica session takes node certificates only"), adminReplication)
        XCTAssertEqual(try cluster.server("demo")?.node, "a", "a refused fence moved the export: \(cluster.logs)")

        // On the export's client port an admin certificate lists locks (`baton locks`) and may not use files;
        // a client certificate may not list the locks of others.
        let listed = try cluster.admin(["locks", "demo"])
        XCTAssertEqual(listed.status, 0, listed.output)
        XCTAssertTrue(listed.output.contains("export demo, epoch"), listed.output)
        let exportPort = NodeAddress(host: agent.host, port: port)
        func answer(_ identity: TLSIdentity, _ message: Message) throws -> Message {
            let connection = try BlockingConnection(exportPort, timeoutMilliseconds: 5000, tls: identity)
            try connection.send(.hello(export: "demo", session: 9, version: Message.protocolVersion))
            while true {
                switch try connection.receive() {
                case .welcome: try connection.send(message)
                case .exportAddresses, .lockLease: continue
                case let other: return other
                }
            }
        }
        guard case .refused(.notAllowed, let adminRequest) = try answer(admin, .request(sequence: 1, oldestUnanswered: 1, .getattr(rootInode))) else {
            return XCTFail("an admin certificate used the export's files")
        }
        XCTAssertTrue(adminRequest.contains("may list locks on export 'demo', not use its files"), adminRequest)
        guard case .refused(.notAllowed, let clientListing) = try answer(client, .locksAsked) else {
            return XCTFail("a client certificate listed the export's locks")
        }
        XCTAssertTrue(clientListing.contains("only an admin certificate may list the locks"), clientListing)
    }

    func testAPlainTCPClusterWarnsAtStart() throws {
        let cluster = try TwoNodeCluster(self)
        try waitFor("both agents warn", cluster) { $0.components(separatedBy: "plain TCP: the cluster file says plaintext = true").count == 3 }
    }

    // MARK: Helpers

    /// Issue 10: an export's client lists, by certificate name: a listed
    /// client reads and writes, a read-only one reads and is answered EROFS
    /// for every change (open for reading still works), and one on neither
    /// list is refused at mount time with the export and the rule, and the
    /// server logs it. The lists follow the export through a failover.
    func testAnExportsClientListsDecideWhoMountsAndWhoWrites() throws {
        let cluster = try TwoNodeCluster(self, tls: true, clientNames: ["laptop-1", "backup", "intruder"],
                                         exportLines: "clients = [\"laptop-*\"]\nread_only_clients = [\"backup\"]\n")
        let writer = try cluster.mount(self, "demo", options: [cluster.tlsMountOptions("laptop-1")], mountpoint: "laptop")
        try Data("from the laptop".utf8).write(to: URL(fileURLWithPath: writer.mountpoint + "/f"))
        let reader = try cluster.mount(self, "demo", options: [cluster.tlsMountOptions("backup")], mountpoint: "backup")
        XCTAssertEqual(try String(contentsOfFile: reader.mountpoint + "/f", encoding: .utf8), "from the laptop")
        for change in [["/bin/sh", "-c", "echo x > \(reader.mountpoint)/new"], ["/bin/sh", "-c", "echo x >> \(reader.mountpoint)/f"],
                       ["/bin/mkdir", "\(reader.mountpoint)/d"], ["/bin/rm", "\(reader.mountpoint)/f"],
                       ["/bin/chmod", "600", "\(reader.mountpoint)/f"]] {
            let result = try runCommand(change[0], Array(change.dropFirst()))
            XCTAssertNotEqual(result.status, 0, "a read-only client changed the export: \(change)")
            XCTAssertTrue(result.output.contains("Read-only file system"), "\(change): \(result.output)")
        }
        XCTAssertEqual(try String(contentsOfFile: writer.mountpoint + "/f", encoding: .utf8), "from the laptop")

        // A deadline, not a measurement: a mount that is let in would stay in the foreground.
        let refused = try runCommand("/usr/bin/timeout", ["30", BatonBinary.path, "mount", "demo@\(cluster.agentAddresses["a"]!.host):\(cluster.exports[0].port)",
                                                       cluster.directory + "/mnt-intruder", "-f", "-o", cluster.tlsMountOptions("intruder")])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.output.contains("export 'demo' does not let this client mount: client \"intruder\" is in neither clients"),
                      refused.output)
        XCTAssertTrue(cluster.logs.contains("does not let this client mount"), cluster.logs)

        let before = try XCTUnwrap(try cluster.server("demo"))
        kill(before.pid, SIGSTOP)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        let afterFailover = try runCommand("/bin/sh", ["-c", "echo x > \(reader.mountpoint)/after"])
        XCTAssertTrue(afterFailover.output.contains("Read-only file system"), "the new server let a read-only client write: \(afterFailover.output)")
        try Data("still writing".utf8).write(to: URL(fileURLWithPath: writer.mountpoint + "/g"))
        XCTAssertEqual(try String(contentsOfFile: reader.mountpoint + "/g", encoding: .utf8), "still writing")
    }

    /// Issue 10: root_squash. A client's root acts as nobody on the export:
    /// the server refuses what nobody may not do (the client's kernel let
    /// root do it), and what it creates belongs to nobody. A client on
    /// root_clients keeps its root (to set directories up), and the rule
    /// holds on the new server after a failover.
    func testRootSquashMakesAClientsRootNobodyExceptOnRootClients() throws {
        let cluster = try TwoNodeCluster(self, tls: true, clientNames: ["admin-host", "laptop"],
                                         exportLines: "root_clients = [\"admin-*\"]\n", squash: "root")
        let admin = try cluster.mount(self, "demo", options: [cluster.tlsMountOptions("admin-host")], mountpoint: "admin")
        let laptop = try cluster.mount(self, "demo", options: [cluster.tlsMountOptions("laptop")], mountpoint: "laptop")
        func sh(_ script: String) throws -> CommandResult { try runCommand("/bin/sh", ["-c", script]) }
        let setUp = try sh("cd \(admin.mountpoint) && mkdir shared private && chmod 1777 shared && echo secret > private/key "
                           + "&& chmod 600 private/key && echo root > shared/roots")
        XCTAssertEqual(setUp.status, 0, "root on a root client: \(setUp.output)")

        func refusedToRoot(_ script: String, _ error: String, _ line: UInt = #line) throws {
            let result = try sh(script)
            XCTAssertNotEqual(result.status, 0, "squashed root did: \(script)", line: line)
            XCTAssertTrue(result.output.contains(error), "\(script): \(result.output)", line: line)
        }
        try refusedToRoot("mkdir \(laptop.mountpoint)/private/mine", "Permission denied")
        try refusedToRoot("cat \(laptop.mountpoint)/private/key", "Permission denied")
        try refusedToRoot("echo x >> \(laptop.mountpoint)/shared/roots", "Permission denied")
        try refusedToRoot("rm \(laptop.mountpoint)/shared/roots", "Operation not permitted")
        XCTAssertEqual(try sh("echo mine > \(laptop.mountpoint)/shared/nobodys").status, 0)
        try refusedToRoot("chown 0 \(laptop.mountpoint)/shared/nobodys", "Operation not permitted")
        let owner = try sh("stat -c %u:%g \(admin.mountpoint)/shared/nobodys")
        XCTAssertEqual(owner.output.trimmingCharacters(in: .whitespacesAndNewlines), "65534:65534", "squashed root's file belongs to nobody")
        XCTAssertEqual(try String(contentsOfFile: admin.mountpoint + "/private/key", encoding: .utf8), "secret\n")

        let before = try XCTUnwrap(try cluster.server("demo"))
        kill(before.pid, SIGSTOP)
        try cluster.waitUntilReplicated("demo", epoch: before.epoch + 1)
        try refusedToRoot("mkdir \(laptop.mountpoint)/private/after", "Permission denied")
        XCTAssertEqual(try sh("mkdir \(admin.mountpoint)/private/admins").status, 0, "the new server lets the root client be root")
    }

    private func files(_ directory: String, _ name: String) -> TLSFiles {
        TLSFiles(certificate: "\(directory)/\(name).pem", key: "\(directory)/\(name).key", authority: directory + "/ca.pem")
    }

    /// Opens a replica session as the peer's server would (secret proof, then
    /// replicaHello), presenting `identity`; returns the refusal's words.
    private func replicaSession(to agent: NodeAddress, presenting identity: TLSIdentity, secret: [UInt8]) throws -> String {
        let connection = try BlockingConnection(agent, timeoutMilliseconds: 3000, tls: identity)
        do {
            while true {
                switch try connection.receive() {
                case .challenge(let nonce):
                    try connection.send(.authenticate(node: "b", proof: AgentAuthentication.proof(.hmacSHA256(secret: secret), nonce: nonce, node: "b")))
                    try connection.send(.replicaHello(export: "demo", epoch: 1))
                case .refused(_, let detail): return detail
                case let other: return "not refused: \(other)"
                }
            }
        } catch {
            return "\(error)"
        }
    }

    private func waitFor(_ what: String, _ cluster: TwoNodeCluster, timeout: TimeInterval = 10, _ holds: (String) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !holds(cluster.logs) {
            guard Date() < deadline else { throw TestError("\(what): not within \(timeout) s\n\(cluster.logs)") }
            usleep(50_000)
        }
    }
}
