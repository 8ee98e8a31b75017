// Goal: small random reads of a file come from the kernel's page cache after
// a window's second miss (issue 11), and never give back bytes older than
// what the reader may see: this mount's own writes at once, another mount's
// at the next open (close-to-open).
// Method: a real `baton serve` counting its reads (metrics), real mounts,
// the page cache looked at with mincore(2).
import BatonRuntime
import Foundation
import XCTest

final class PrefetchMountTests: XCTestCase {
    override func setUpWithError() throws {
        guard FileManager.default.isReadableFile(atPath: "/dev/fuse"), getuid() == 0 else {
            throw XCTSkip("needs root and /dev/fuse")
        }
    }

    static let page = 4096
    static let window = 256 << 10

    func testSmallReadsOfAWindowComeFromThePageCacheAfterOneServerRead() throws {
        let directory = try temporaryDirectory(self)
        let server = try ServerProcess(self, export: "data", data: directory + "/data",
                                       extraArguments: ["--metrics-listen", "127.0.0.1:0"])
        let metrics = try XCTUnwrap(server.metricsAddress)
        let mount = try MountProcess(self, source: "data@\(server.address)", mountpoint: directory + "/mnt")
        let path = mount.mountpoint + "/f"
        var content = (0..<(4 * Self.window)).map { _ in UInt8.random(in: 0...255) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(content)))

        let reader = try OpenedFile(path, O_RDONLY)
        let readsBefore = try serverReads(metrics)
        try assertPage(reader, at: Self.window + 3 * Self.page, holds: content, "the window's first miss")
        try assertPage(reader, at: Self.window + 9 * Self.page, holds: content, "its second miss")
        try waitUntil("the read's window in the page cache", timeout: 10) {
            try reader.residentPages(in: Self.window..<(2 * Self.window)) == Self.window / Self.page
        }
        for page in (0..<(Self.window / Self.page)).shuffled() {
            let offset = Self.window + page * Self.page
            try assertPage(reader, at: offset, holds: content, "page \(page) of the window")
        }
        XCTAssertEqual(try serverReads(metrics) - readsBefore, 2, "the window's 64 pages cost two server reads")

        // Another mount's write is seen at the next open, not before it is asked for.
        let other = try MountProcess(self, source: "data@\(server.address)", mountpoint: directory + "/mnt2")
        let changed = [UInt8](repeating: 0xA5, count: Self.page)
        let writer = try OpenedFile(other.mountpoint + "/f", O_WRONLY)
        try writer.write(changed, at: Self.window + 7 * Self.page)
        writer.close()
        content.replaceSubrange((Self.window + 7 * Self.page)..<(Self.window + 8 * Self.page), with: changed)
        reader.close()
        let reopened = try OpenedFile(path, O_RDONLY)
        try assertPage(reopened, at: Self.window + 7 * Self.page, holds: content, "another mount's write after an open: an open drops the windows stored before it")
    }

    func testReadsSeeEveryWriteOfAHandleOpenBesideThem() throws {
        let export = try MountedExport(self)
        let path = export.path + "/f"
        var content = (0..<Self.window).map { _ in UInt8.random(in: 0...255) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(content)))
        let reader = try OpenedFile(path, O_RDONLY)
        let writer = try OpenedFile(path, O_WRONLY)
        for round in 0..<200 {
            let written = Int.random(in: 0..<(Self.window / Self.page)) * Self.page
            let bytes = [UInt8](repeating: UInt8(round % 251), count: Self.page)
            try writer.write(bytes, at: written)
            content.replaceSubrange(written..<(written + Self.page), with: bytes)
            for offset in [written, Int.random(in: 0..<(Self.window / Self.page)) * Self.page] {
                try assertPage(reader, at: offset, holds: content, "round \(round), the write at \(written)")
            }
        }
        // And once the writer has gone, reads are prefetched again and still right.
        writer.close()
        for page in (0..<(Self.window / Self.page)).shuffled().prefix(32) {
            try assertPage(reader, at: page * Self.page, holds: content, "page \(page) after the writer closed")
        }
    }

    /// Fails, without printing 4 KiB twice, unless the page at `offset` reads as in `content`.
    private func assertPage(_ file: OpenedFile, at offset: Int, holds content: [UInt8], _ what: String,
                            file path: StaticString = #filePath, line: UInt = #line) throws {
        let got = try file.read(at: offset)
        let expected = Array(content[offset..<min(content.count, offset + Self.page)])
        guard got != expected else { return }
        let first = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(got.count, expected.count)
        XCTFail("\(what): \(got.count) bytes read at \(offset), first difference at byte \(first)", file: path, line: line)
    }

    private func serverReads(_ metrics: NodeAddress) throws -> Double {
        let (status, page) = try httpGet(metrics, "/metrics")
        XCTAssertEqual(status, "HTTP/1.0 200 OK")
        return sampleSum(page, "baton_requests_total", ["operation=\"read\""]) ?? 0
    }
}

/// A file opened with open(2), read a page at a time with readahead off
/// (POSIX_FADV_RANDOM), so that every page the kernel holds beyond those read
/// was put there by the mount.
private final class OpenedFile {
    private var descriptor: Int32
    private let path: String

    init(_ path: String, _ flags: Int32) throws {
        self.path = path
        descriptor = open(path, flags)
        guard descriptor >= 0 else { throw TestError("open \(path): \(String(cString: strerror(errno)))") }
        _ = posix_fadvise(descriptor, 0, 0, POSIX_FADV_RANDOM)
    }

    deinit { close() }

    func close() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }

    func read(at offset: Int, count: Int = PrefetchMountTests.page) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, off_t(offset)) }
        guard got >= 0 else { throw TestError("pread \(path): \(String(cString: strerror(errno)))") }
        return Array(bytes.prefix(got))
    }

    func write(_ bytes: [UInt8], at offset: Int) throws {
        let put = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, bytes.count, off_t(offset)) }
        guard put == bytes.count else { throw TestError("pwrite \(path): \(String(cString: strerror(errno)))") }
    }

    /// How many pages of `range` (page-aligned bytes) the page cache holds.
    func residentPages(in range: Range<Int>) throws -> Int {
        guard let mapping = mmap(nil, range.count, PROT_READ, MAP_SHARED, descriptor, off_t(range.lowerBound)),
              mapping != MAP_FAILED else { throw TestError("mmap \(path): \(String(cString: strerror(errno)))") }
        defer { munmap(mapping, range.count) }
        var resident = [UInt8](repeating: 0, count: range.count / PrefetchMountTests.page)
        guard mincore(mapping, range.count, &resident) == 0 else { throw TestError("mincore \(path): \(String(cString: strerror(errno)))") }
        return resident.filter { $0 & 1 != 0 }.count
    }
}
