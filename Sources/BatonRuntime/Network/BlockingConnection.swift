#if canImport(Glibc)
import Glibc
#endif
import BatonCore
import Foundation

/// A TCP connection with blocking sockets and timeouts, for short exchanges
/// that must not start threads (before a fork) or are too rare to deserve
/// an event loop (admin requests, the mount's first check).
public final class BlockingConnection {
    private let fd: Int32
    public let address: NodeAddress

    /// `connectTimeoutMilliseconds` (at most the whole timeout) bounds the
    /// connect alone: an address on a path that is down should fail fast.
    public init(_ address: NodeAddress, timeoutMilliseconds: Int32, connectTimeoutMilliseconds: Int32? = nil) throws {
        self.address = address
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard status == 0, let first = list else {
            throw ProbeError("cannot resolve \(address.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        // Owned by this local until the connect succeeds: once every stored
        // property is set, a throwing init runs deinit, which closes `fd`
        // again, and a second close reaches whatever descriptor another
        // thread opened under that number meanwhile.
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProbeError("socket: errno \(errno)") }
        func setTimeout(_ option: Int32, _ milliseconds: Int32) {
            var timeout = timeval(tv_sec: Int(milliseconds / 1000), tv_usec: Int(milliseconds % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        setTimeout(SO_RCVTIMEO, timeoutMilliseconds)
        // connect() honours the send timeout on Linux.
        setTimeout(SO_SNDTIMEO, min(connectTimeoutMilliseconds ?? timeoutMilliseconds, timeoutMilliseconds))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw ProbeError("connect to \(address): \(reason)")
        }
        setTimeout(SO_SNDTIMEO, timeoutMilliseconds)
        self.fd = fd
    }

    deinit { close(fd) }

    public func send(_ message: Message) throws {
        let frame = message.frame()
        guard frame.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == frame.count else {
            throw ProbeError("send to \(address): \(String(cString: strerror(errno)))")
        }
    }

    /// Raw bytes, for a request of another protocol than Baton's (an HTTP scrape).
    public func send(bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { throw ProbeError("send to \(address): \(String(cString: strerror(errno)))") }
            done += sent
        }
    }

    /// Everything up to the peer's end of the stream, at most `limitBytes`.
    public func receiveToEnd(limitBytes: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if got < 0 && errno == EINTR { continue }
            if got == 0 { return bytes }
            guard got > 0 else { throw ProbeError("no answer from \(address): \(String(cString: strerror(errno)))") }
            bytes += chunk[0..<got]
            guard bytes.count <= limitBytes else { throw ProbeError("\(address) sent more than \(limitBytes) bytes") }
        }
    }

    public func receive(limitBytes: Int = WireLimits.maxFrameBytes) throws -> Message {
        let header = try receive(count: 4)
        let length = Int(header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self).littleEndian })
        guard length <= limitBytes else { throw ProbeError("\(address) sent an oversized frame (\(length) bytes)") }
        let body = try receive(count: length)
        return try body.withUnsafeBytes { try Message.decode($0) }
    }

    private func receive(count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else {
                throw ProbeError("no answer from \(address): " + (got == 0 ? "connection closed" : String(cString: strerror(errno))))
            }
            done += got
        }
        return bytes
    }
}

extension FileHandle {
    /// One line, read byte by byte so nothing after it is consumed (a child
    /// process's first line says it is ready; the rest is its own business).
    public func readLine() -> String? {
        var bytes: [UInt8] = []
        while let byte = readData(ofLength: 1).first {
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
