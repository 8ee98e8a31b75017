import Foundation

/// The established TCP connections of this network namespace, from
/// `/proc/net/tcp`: an MPTCP connection's subflows are TCP sockets there,
/// each with the local address of the path it runs on. `baton status` shows
/// from them which traffic each path carries.
public enum TCPCensus {
    public struct Connection: Hashable, Sendable {
        public var localHost: String
        public var localPort: Int
        public var remotePort: Int
    }

    public static func established(table: String = "/proc/net/tcp") -> [Connection] {
        guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { return [] }
        return parse(text)
    }

    /// Lines as "  0: 0101A8C6:1B58 0201A8C6:9C4E 01 ...": local, remote (address in host order, hex), state (01 established).
    static func parse(_ text: String) -> [Connection] {
        text.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(whereSeparator: \.isWhitespace)
            guard fields.count > 3, fields[3] == "01" else { return nil }
            let local = fields[1].split(separator: ":"), remote = fields[2].split(separator: ":")
            guard local.count == 2, remote.count == 2, let address = UInt32(local[0], radix: 16),
                  let localPort = Int(local[1], radix: 16), let remotePort = Int(remote[1], radix: 16) else { return nil }
            let host = (0..<4).map { String((address >> (8 * $0)) & 0xFF) }.joined(separator: ".")
            return Connection(localHost: host, localPort: localPort, remotePort: remotePort)
        }
    }
}
