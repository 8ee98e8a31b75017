/// What an agent tells the export server it started, on the server's stdin,
/// each command framed as a message is (a u32 length, then its bytes).
/// Typed commands on the pipe the agent already holds for as long as the
/// server is to run (its end stops the server), instead of signals: a
/// signal sent before the server set up its handler was lost, and a signal
/// from anyone else with the right to send it read as the agent's.
public enum ServerControl: Hashable, Sendable {
    /// The go-ahead of a server started ahead of a swap (`--await-promotion`):
    /// open the export and serve. `alone`: answer without waiting for a standby.
    case promote(alone: Bool)
    /// The standby is gone: answer without waiting for it from now on.
    case continueWithoutStandby
    /// A planned swap: take no more mutations, wait until the standby has
    /// every record, and exit (0 when it has them).
    case handOver
    /// A NIC of this node has its link again (`LocalPaths`): a replication
    /// connection down to one subflow is made again, to use both paths.
    case pathRestored
    /// The agent's consent at the wait limit (`ServerReport.standbyWaitLimitReached`):
    /// stop waiting for the standby if the oldest reply still waits for
    /// record `oldestWaiting`; a consent that comes after the standby caught
    /// up again is stale (its replica may watch this server again) and is ignored.
    case answerAlone(oldestWaiting: UInt64)

    enum Tag: UInt8 {
        case promote = 1, continueWithoutStandby, handOver, pathRestored, answerAlone
    }

    /// The largest command: every one is a few bytes; more is not the agent speaking.
    public static let maxFrameBytes = 64

    public func frame() -> [UInt8] {
        ByteWriter.frame(capacity: 16) { w in
            switch self {
            case .promote(let alone): w.write(Tag.promote.rawValue); w.write(alone)
            case .continueWithoutStandby: w.write(Tag.continueWithoutStandby.rawValue)
            case .handOver: w.write(Tag.handOver.rawValue)
            case .pathRestored: w.write(Tag.pathRestored.rawValue)
            case .answerAlone(let oldest): w.write(Tag.answerAlone.rawValue); w.write(oldest)
            }
        }
    }

    /// One command from the bytes of its frame (after the length).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> ServerControl {
        var r = ByteReader(bytes)
        let tag = try r.readTag(Tag.self, kind: "server control")
        let command: ServerControl = switch tag {
        case .promote: .promote(alone: try r.readBool())
        case .continueWithoutStandby: .continueWithoutStandby
        case .handOver: .handOver
        case .pathRestored: .pathRestored
        case .answerAlone: .answerAlone(oldestWaiting: try r.readUInt64())
        }
        try r.expectEnd()
        return command
    }
}
