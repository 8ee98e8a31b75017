/// What an export server tells the agent that started it, on the server's
/// stdout, framed as `ServerControl` is (a u32 length, then its bytes). The
/// agent reads them from one pipe instead of parsing text lines: a line
/// that changed its words for an admin could no longer be read by the agent.
/// A server started by hand (no agent) prints a text line for people and
/// scripts instead (`ServerReport.listeningLine`).
public enum ServerReport: Hashable, Sendable {
    /// A server started ahead of a swap (`--await-promotion`) has bound its
    /// sockets (the client one on `clients`) and waits for `promote`.
    case waitingForPromotion(clients: HostAndPort)
    /// It serves: its bound addresses (the ports it got when asked for port 0).
    case listening(clients: HostAndPort, monitor: HostAndPort?, metrics: HostAndPort?)
    /// The first client connection was welcomed (the agent logs when clients came back after a swap).
    case firstClientWelcomed
    /// A reply has waited for the standby past the wait limit (`waitedMilliseconds`,
    /// for record `sequence`, the oldest waiting): may replies stop waiting for it? The agent
    /// answers `ServerControl.answerAlone` (or `continueWithoutStandby`, the
    /// peer gone), or nothing while it withholds its consent (`ExportRole.answerAlone`). Sent again at each
    /// wait check while the reply waits.
    case standbyWaitLimitReached(waitedMilliseconds: UInt64, sequence: UInt64)

    enum Tag: UInt8 {
        case waitingForPromotion = 1, listening, firstClientWelcomed, standbyWaitLimitReached
    }

    /// Every report is a few addresses; more is not a server speaking.
    public static let maxFrameBytes = 1024
    private static let maxAddressBytes = 300

    public func frame() -> [UInt8] {
        ByteWriter.frame(capacity: 64) { w in
            switch self {
            case .waitingForPromotion(let clients):
                w.write(Tag.waitingForPromotion.rawValue)
                w.write(clients.description)
            case .listening(let clients, let monitor, let metrics):
                w.write(Tag.listening.rawValue)
                w.write(clients.description)
                w.write(monitor?.description ?? "")
                w.write(metrics?.description ?? "")
            case .firstClientWelcomed:
                w.write(Tag.firstClientWelcomed.rawValue)
            case .standbyWaitLimitReached(let waited, let sequence):
                w.write(Tag.standbyWaitLimitReached.rawValue)
                w.write(waited)
                w.write(sequence)
            }
        }
    }

    /// One report from the bytes of its frame (after the length).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> ServerReport {
        var r = ByteReader(bytes)
        let tag = try r.readTag(Tag.self, kind: "server report")
        let report: ServerReport
        switch tag {
        case .waitingForPromotion:
            report = .waitingForPromotion(clients: try readAddress(&r))
        case .listening:
            report = .listening(clients: try readAddress(&r), monitor: try readAddress(&r, optional: true),
                                metrics: try readAddress(&r, optional: true))
        case .firstClientWelcomed:
            report = .firstClientWelcomed
        case .standbyWaitLimitReached:
            report = .standbyWaitLimitReached(waitedMilliseconds: try r.readUInt64(), sequence: try r.readUInt64())
        }
        try r.expectEnd()
        return report
    }

    private static func readAddress(_ r: inout ByteReader, optional: Bool = false) throws(DecodeError) -> HostAndPort? {
        let text = try r.readString(limit: maxAddressBytes, kind: "address")
        if optional, text.isEmpty { return nil }
        guard let address = HostAndPort(text) else { throw .invalid("not HOST:PORT: \(text)") }
        return address
    }

    private static func readAddress(_ r: inout ByteReader) throws(DecodeError) -> HostAndPort {
        try readAddress(&r, optional: false)!
    }

    /// What a server started by hand prints once it serves, for people and
    /// scripts that asked for port 0: `listening HOST:PORT [monitor HOST:PORT] [metrics HOST:PORT]`.
    public var listeningLine: String? {
        guard case .listening(let clients, let monitor, let metrics) = self else { return nil }
        return "listening \(clients)" + (monitor.map { " monitor \($0)" } ?? "") + (metrics.map { " metrics \($0)" } ?? "")
    }
}
