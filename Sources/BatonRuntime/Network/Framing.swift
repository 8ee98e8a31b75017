import BatonCore
import NIOCore

/// Splits a TCP byte stream into frames (u32 length, then that many bytes)
/// and decodes each into a `Message`. A frame over the limit or a message that
/// does not decode is an error: the connection is closed, the process goes on.
public struct MessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Message
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        var message: Message?
        let state = try Self.decodeOne(buffer: &buffer) { message = $0 }
        if let message { context.fireChannelRead(wrapInboundOut(message)) }
        return state
    }

    static func decodeOne(buffer: inout ByteBuffer, deliver: (Message) -> Void) throws -> DecodingState {
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
        deliver(message)
        return .continue
    }
}

/// What a server reads: messages, except that a write request keeps its data
/// in the receive buffer, so the server writes it to disk without copying it
/// into an array first.
public enum InboundRequest {
    case message(Message)
    case write(sequence: UInt64, oldestUnanswered: UInt64, inode: InodeNumber, handle: UInt64, offset: UInt64, data: ByteBuffer)
}

/// The server's decoder: like `MessageDecoder`, with write requests split off.
public struct RequestDecoder: ByteToMessageDecoder {
    public typealias InboundOut = InboundRequest
    public init() {}

    /// request tag, sequence, oldest unanswered, operation tag, inode, handle, offset, data length
    private static let writeHeaderBytes = 1 + 8 + 8 + 1 + 8 + 8 + 8 + 4

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) else {
            return .needMoreData
        }
        guard Int(length) <= WireLimits.maxFrameBytes else { throw FrameError.frameTooLarge(Int(length)) }
        guard buffer.readableBytes >= 4 + Int(length) else {
            buffer.reserveCapacity(minimumWritableBytes: 4 + Int(length) - buffer.readableBytes)
            return .needMoreData
        }
        let start = buffer.readerIndex + 4
        if Int(length) >= Self.writeHeaderBytes,
           buffer.getInteger(at: start, as: UInt8.self) == Message.Tag.request.rawValue,
           buffer.getInteger(at: start + 17, as: UInt8.self) == Operation.writeTag,
           let dataLength = buffer.getInteger(at: start + Self.writeHeaderBytes - 4, endianness: .little, as: UInt32.self),
           Int(dataLength) == Int(length) - Self.writeHeaderBytes {
            let request = InboundRequest.write(
                sequence: buffer.getInteger(at: start + 1, endianness: .little)!,
                oldestUnanswered: buffer.getInteger(at: start + 9, endianness: .little)!,
                inode: buffer.getInteger(at: start + 18, endianness: .little)!,
                handle: buffer.getInteger(at: start + 26, endianness: .little)!,
                offset: buffer.getInteger(at: start + 34, endianness: .little)!,
                data: buffer.getSlice(at: start + Self.writeHeaderBytes, length: Int(dataLength))!)
            buffer.moveReaderIndex(forwardBy: 4 + Int(length))
            context.fireChannelRead(wrapInboundOut(request))
            return .continue
        }
        var out: Message?
        let state = try MessageDecoder.decodeOne(buffer: &buffer) { out = $0 }
        if let out { context.fireChannelRead(wrapInboundOut(.message(out))) }
        return state
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
    /// File data (the last field of a write request or a data reply) is
    /// copied once, straight into the buffer.
    public func frame(allocator: ByteBufferAllocator) -> ByteBuffer {
        var writer = ByteWriter(capacity: 96)
        writer.write(UInt32(0))
        let data: [UInt8]
        switch self {
        case .request(let sequence, let oldest, .write(let ino, let handle, let offset, let bytes), nil):
            Message.request(sequence: sequence, oldestUnanswered: oldest, .write(ino, handle: handle, offset: offset, data: []))
                .encode(to: &writer)
            data = bytes
        case .reply(let sequence, let epoch, .bytes(let bytes)):
            Message.reply(sequence: sequence, epoch: epoch, .bytes([])).encode(to: &writer)
            data = bytes
        default:
            encode(to: &writer)
            data = []
        }
        // The data's length prefix is the last u32 written.
        if !data.isEmpty { writer.patch(UInt32(data.count), at: writer.bytes.count - 4) }
        writer.patch(UInt32(writer.bytes.count - 4 + data.count), at: 0)
        var buffer = allocator.buffer(capacity: writer.bytes.count + data.count)
        buffer.writeBytes(writer.bytes)
        buffer.writeBytes(data)
        return buffer
    }

}

/// A node's `HOST:PORT`, as the cluster file, command lines and connections name it.
public typealias NodeAddress = HostAndPort
