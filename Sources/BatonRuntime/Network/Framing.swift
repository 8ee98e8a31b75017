import BatonCore
import NIOCore

/// Splits a TCP byte stream into frames (u32 length, then that many bytes)
/// and decodes each into a `Message`. A frame over the limit or a message that
/// does not decode is an error: the connection is closed, the process goes on.
public struct MessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Message
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
            return .needMoreData
        }
        guard Int(length) <= WireLimits.maxFrameBytes else {
            throw FrameError.frameTooLarge(Int(length))
        }
        guard buffer.readableBytes >= 4 + Int(length) else {
            buffer.reserveCapacity(minimumWritableBytes: 4 + Int(length) - buffer.readableBytes)
            return .needMoreData
        }
        buffer.moveReaderIndex(forwardBy: 4)
        let message = try buffer.readWithUnsafeReadableBytes { raw -> (Int, Message) in
            do {
                return (Int(length), try Message.decode(UnsafeRawBufferPointer(rebasing: raw[0..<Int(length)])))
            } catch {
                throw FrameError.malformed(error as! DecodeError)
            }
        }
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }
}

public enum FrameError: Error, CustomStringConvertible {
    case frameTooLarge(Int)
    case malformed(DecodeError)

    public var description: String {
        switch self {
        case .frameTooLarge(let size): "frame of \(size) bytes exceeds the limit of \(WireLimits.maxFrameBytes)"
        case .malformed(let error): "malformed message: \(error)"
        }
    }
}

extension Message {
    /// The message as one frame in a buffer, ready to write to a channel.
    public func frame(allocator: ByteBufferAllocator) -> ByteBuffer {
        var writer = ByteWriter(capacity: 64 + payloadHint)
        writer.write(UInt32(0))
        encode(to: &writer)
        writer.patch(UInt32(writer.bytes.count - 4), at: 0)
        return allocator.buffer(bytes: writer.bytes)
    }

    /// Bytes of file data carried, for buffer sizing.
    var payloadHint: Int {
        switch self {
        case .request(_, _, let operation): operation.dataCount
        case .reply(_, _, .bytes(let bytes)): bytes.count
        default: 0
        }
    }
}

/// A `host:port` address as given on command lines and in configs.
public struct NodeAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (IPv6 as `[::1]:PORT`).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
