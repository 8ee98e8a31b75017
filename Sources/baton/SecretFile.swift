import ArgumentParser
import BatonCore
import Foundation

/// The cluster's shared secret, read from its file.
enum SecretFile {
    static func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the secret file \(path): create it with 'head -c 64 /dev/urandom > \(path); chmod 600 \(path)' on every node")
        }
        guard data.count >= ClusterConfiguration.minSecretBytes else {
            throw ValidationError("the secret file \(path) holds \(data.count) bytes; it needs at least \(ClusterConfiguration.minSecretBytes)")
        }
        return Array(data)
    }
}

/// Reads and checks the cluster file; errors name the line and what to fix.
enum ClusterFile {
    static func load(_ path: String) throws -> ClusterConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the cluster file \(path)")
        }
        do {
            return try ClusterConfiguration.parse(String(decoding: data, as: UTF8.self))
        } catch {
            throw ValidationError("\(path): \(error)")
        }
    }
}
