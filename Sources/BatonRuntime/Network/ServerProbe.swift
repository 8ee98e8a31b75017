#if canImport(Glibc)
import Glibc
#endif
import BatonCore

/// Asks one server, with plain blocking sockets, whether it serves an export
/// and is active. Used before a mount forks into the background: SwiftNIO and
/// Dispatch must not run before a fork, so this touches neither.
public enum ServerProbe {
    public enum Answer: Equatable, Sendable {
        case active(epoch: UInt64)
        case refused(Refusal, detail: String)
    }

    public static func hello(_ address: NodeAddress, export: String, timeoutMilliseconds: Int32 = 2000) throws -> Answer {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard status == 0, let first = list else {
            throw ProbeError("cannot resolve \(address.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ProbeError("socket: errno \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            throw ProbeError("connect to \(address): \(String(cString: strerror(errno)))")
        }
        let frame = Message.hello(export: export, session: 0, version: Message.protocolVersion).frame()
        guard frame.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == frame.count else {
            throw ProbeError("send to \(address): \(String(cString: strerror(errno)))")
        }
        let header = try receive(fd, count: 4, from: address)
        let length = Int(header.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self).littleEndian })
        guard length <= 64 * 1024 else { throw ProbeError("\(address) answered with an oversized frame") }
        let body = try receive(fd, count: length, from: address)
        switch try body.withUnsafeBytes({ try Message.decode($0) }) {
        case .welcome(let epoch): return .active(epoch: epoch)
        case .refused(let refusal, let detail): return .refused(refusal, detail: detail)
        default: throw ProbeError("\(address) answered hello with an unexpected message")
        }
    }

    private static func receive(_ fd: Int32, count: Int, from address: NodeAddress) throws -> [UInt8] {
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

public struct ProbeError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
