/// Everything that crosses a client-server connection. On the wire each
/// message is one frame: a u32 length, then the message bytes.
public enum Message: Hashable, Sendable {
    /// Client → server, first on every connection.
    case hello(export: String, session: UInt64, version: UInt32)
    /// Server → client: this server is active for the export; requests may follow.
    case welcome(epoch: UInt64)
    /// Server → client: this server will not serve the export; the client tries another address.
    case refused(Refusal, detail: String)
    /// Client → server. `oldestUnanswered` lets the server drop cached replies below it.
    case request(sequence: UInt64, oldestUnanswered: UInt64, Operation)
    /// Server → client.
    case reply(sequence: UInt64, epoch: UInt64, Reply)

    public static let protocolVersion: UInt32 = 1
}

public enum Refusal: UInt8, Hashable, Sendable {
    case unknownExport = 1
    case notActive
    case badVersion
    case malformed
    case shuttingDown
}

extension Message {
    /// Wire tags; public so a server can frame read data in place.
    public enum Tag: UInt8 { case hello = 1, welcome, refused, request, reply }

    public func encode(to w: inout ByteWriter) {
        switch self {
        case .hello(let export, let session, let version):
            w.write(Tag.hello.rawValue); w.write(export); w.write(session); w.write(version)
        case .welcome(let epoch): w.write(Tag.welcome.rawValue); w.write(epoch)
        case .refused(let refusal, let detail): w.write(Tag.refused.rawValue); w.write(refusal.rawValue); w.write(detail)
        case .request(let sequence, let oldest, let operation):
            w.write(Tag.request.rawValue); w.write(sequence); w.write(oldest); operation.encode(to: &w)
        case .reply(let sequence, let epoch, let reply):
            w.write(Tag.reply.rawValue); w.write(sequence); w.write(epoch); reply.encode(to: &w)
        }
    }

    /// Encodes as a whole frame (length prefix included).
    public func frame() -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.write(UInt32(0))
        encode(to: &w)
        w.patch(UInt32(w.bytes.count - 4), at: 0)
        return w.bytes
    }

    public static func decode(from r: inout ByteReader) throws(DecodeError) -> Message {
        let raw = try r.readUInt8()
        guard let tag = Tag(rawValue: raw) else { throw .unknownTag(kind: "message", tag: UInt32(raw)) }
        let message: Message
        switch tag {
        case .hello:
            message = .hello(export: try r.readString(limit: 255, kind: "export name"), session: try r.readUInt64(),
                             version: try r.readUInt32())
        case .welcome: message = .welcome(epoch: try r.readUInt64())
        case .refused:
            let raw = try r.readUInt8()
            guard let refusal = Refusal(rawValue: raw) else { throw .unknownTag(kind: "refusal", tag: UInt32(raw)) }
            message = .refused(refusal, detail: try r.readString(limit: 4096, kind: "refusal detail"))
        case .request:
            message = .request(sequence: try r.readUInt64(), oldestUnanswered: try r.readUInt64(), try Operation.decode(from: &r))
        case .reply:
            message = .reply(sequence: try r.readUInt64(), epoch: try r.readUInt64(), try Reply.decode(from: &r))
        }
        try r.expectEnd()
        return message
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> Message {
        var reader = ByteReader(bytes)
        return try decode(from: &reader)
    }
}
