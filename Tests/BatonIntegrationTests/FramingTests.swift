// Goal: the frames the runtime writes are the frames the core defines, and
// the server's decoder hands write data over in place and refuses bad frames.
// Method: encode with both encoders and compare bytes; feed frames, split at
// every byte, through an EmbeddedChannel.
import BatonCore
import BatonRuntime
import NIOCore
import NIOEmbedded
import XCTest

final class FramingTests: XCTestCase {
    let messages: [Message] = [
        .request(sequence: 7, oldestUnanswered: 3, .write(5, handle: 9, offset: 1 << 33, data: Array(0..<200))),
        .request(sequence: 8, oldestUnanswered: 3, .write(5, handle: 9, offset: 0, data: [])),
        .request(sequence: 9, oldestUnanswered: 3, .getattr(1)),
        .reply(sequence: 9, epoch: 2, .bytes(Array(repeating: 0xAB, count: 5000))),
        .reply(sequence: 9, epoch: 2, .bytes([])),
        .reply(sequence: 10, epoch: 2, .written(count: 3)),
        .hello(export: "x", session: 1, version: Message.protocolVersion),
    ]

    func testBufferFramesMatchTheCoreEncoding() {
        for message in messages {
            let buffer = message.frame(allocator: ByteBufferAllocator())
            XCTAssertEqual(Array(buffer.readableBytesView), message.frame(), "\(message)")
        }
    }

    func testRequestDecoderSplitsWritesAndPassesTheRest() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RequestDecoder()))
        var all = ByteBuffer()
        for message in messages where { if case .request = $0 { return true } else { return false } }(message) {
            all.writeBytes(message.frame())
        }
        // Byte by byte: frames split anywhere must still decode.
        while all.readableBytes > 0 {
            try channel.writeInbound(all.readSlice(length: 1)!)
        }
        guard case .write(let sequence, let oldest, let ino, let handle, let offset, let data)? = try channel.readInbound(as: InboundRequest.self) else {
            return XCTFail("first frame is not a write")
        }
        XCTAssertEqual([sequence, oldest, ino, handle, offset], [7, 3, 5, 9, 1 << 33])
        XCTAssertEqual(Array(data.readableBytesView), Array(0..<200))
        guard case .write(_, _, _, _, _, let empty)? = try channel.readInbound(as: InboundRequest.self) else { return XCTFail() }
        XCTAssertEqual(empty.readableBytes, 0)
        guard case .message(.request(9, 3, .getattr(1), nil))? = try channel.readInbound(as: InboundRequest.self) else { return XCTFail() }
        XCTAssertNil(try channel.readInbound(as: InboundRequest.self))
    }

    func testOversizedFrameIsAnError() {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RequestDecoder()))
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(WireLimits.maxFrameBytes + 1), endianness: .little)
        XCTAssertThrowsError(try channel.writeInbound(buffer))
    }
}
