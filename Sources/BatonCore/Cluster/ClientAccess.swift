/// Who may mount an export, by the name in the client's certificate
/// (issue 10; NFS's `/etc/exports` client lists, GlusterFS's `auth.allow`):
/// each export lists the clients that may read and write, and those that
/// may only read, as names or patterns (`*` any run of characters, `?` one).
public struct ClientAccess: Hashable, Sendable {
    public enum Grant: Hashable, Sendable {
        case readWrite
        case readOnly
        /// Named in no list; the text says which lists were read, for the refusal.
        case refused(String)
    }

    /// Patterns of clients that may read and write.
    public var readWrite: [String]
    /// Patterns of clients that may only read; a name on both lists may read and write.
    public var readOnly: [String]

    /// Every client of the cluster's CA may read and write: what an export without lists allows.
    public static let everyone = ClientAccess(readWrite: ["*"], readOnly: [])

    public init(readWrite: [String], readOnly: [String]) {
        self.readWrite = readWrite
        self.readOnly = readOnly
    }

    public func grant(_ client: String) -> Grant {
        if readWrite.contains(where: { Self.matches(client, $0) }) { return .readWrite }
        if readOnly.contains(where: { Self.matches(client, $0) }) { return .readOnly }
        return .refused("client \"\(client)\" is in neither clients \(readWrite) nor read_only_clients \(readOnly)")
    }

    /// Glob matching of `*` and `?` over the whole name, without backtracking blow-up.
    public static func matches(_ name: String, _ pattern: String) -> Bool {
        let name = Array(name.unicodeScalars), pattern = Array(pattern.unicodeScalars)
        var n = 0, p = 0
        var star: Int?, resume = 0
        while n < name.count {
            if p < pattern.count, pattern[p] == "?" || pattern[p] == name[n] {
                n += 1
                p += 1
            } else if p < pattern.count, pattern[p] == "*" {
                star = p
                resume = n
                p += 1
            } else if let star {
                // Let the last star take one more character and try again.
                p = star + 1
                resume += 1
                n = resume
            } else {
                return false
            }
        }
        while p < pattern.count, pattern[p] == "*" { p += 1 }
        return p == pattern.count
    }
}
