import BatonCore
import Glibc
import NIOCore

/// A listening socket opened ahead of the server that will accept on it.
public enum ListeningSocket {
    /// A TCP socket (MPTCP with `multipath`, where the kernel has it) bound
    /// to `address` and listening, and its port; the kernel completes
    /// clients' connections from now on, and they wait in its queue until
    /// the server accepts them.
    public static func open(_ address: NodeAddress, multipath: Bool = false) throws -> (CInt, Int) {
        let resolved = try SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
        let socket = Glibc.socket(Int32(resolved.protocol.rawValue), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                                   Multipath.streamProtocol(multipath))
        guard socket >= 0 else { throw ProbeError("cannot create a socket for \(address): errno \(errno)") }
        var one: CInt = 1
        setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        // Connections inherit it from here, also those queued before the server
        // accepts (NIO sets it on the listening socket, not on each connection:
        // those queued earlier would otherwise keep Nagle, 40 ms per small reply).
        setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<CInt>.size))
        let result: CInt
        switch resolved {
        case .v4(let v4):
            var raw = v4.address
            result = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6(let v6):
            var raw = v6.address
            result = withUnsafePointer(to: &raw) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        default:
            close(socket)
            throw ProbeError("--listen \(address) is not an IP address")
        }
        guard result == 0, listen(socket, 256) == 0 else {
            let error = errno
            close(socket)
            throw ProbeError("cannot listen on \(address): \(String(cString: strerror(error)))")
        }
        var bound = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let port = withUnsafeMutablePointer(to: &bound) { pointer -> Int in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(socket, $0, &length) }
            return Int(UInt16(bigEndian: pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }))
        }
        return (socket, port)
    }
}
