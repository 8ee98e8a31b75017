// Goal: the fuzzers' seed corpus (Fuzz/corpus, see mountscripts/fuzz) holds
// real encodings of every message, record and file kind, and stays current.
// Method: build the seeds from the codec tests' lists; with
// BATON_WRITE_FUZZ_CORPUS=1 write them, otherwise check that the checked-in
// seeds are the ones built now.
@testable import BatonCore
import Foundation
import XCTest

final class FuzzCorpusTests: XCTestCase {
    static func seeds() throws -> [String: [String: [UInt8]]] {
        var seeds: [String: [String: [UInt8]]] = [:]
        let requests = CodecTests.operations.enumerated().map {
            Message.request(sequence: UInt64($0.offset + 1), oldestUnanswered: 1, $0.element)
        }
        let messages: [Message] = requests + CodecTests.replies.map { .reply(sequence: 9, epoch: 2, $0) } + [
            .hello(export: "demo", session: 1, version: Message.protocolVersion), .welcome(epoch: 3),
            .probe(key: [UInt8](repeating: 7, count: ChallengeMAC.keyBytes)), .heartbeat(epoch: 3, sequence: 9, alone: true),
            .agentRequest(.status), .agentRequest(.forceServe(export: "demo")), .agentRequest(.outdate(export: "demo", epoch: 2)),
            .repliesWait(through: 4),
            .exportAddresses([HostAndPort(host: "198.18.1.1", port: 7000), HostAndPort(host: "fe80::1", port: 7000)], multipath: true),
            .lockLease(milliseconds: 30_000), .leaseRenewal, .locksAsked, .locksAnswer(json: "{}"),
        ]
        seeds["message"] = Dictionary(uniqueKeysWithValues: messages.enumerated().map {
            (String(format: "%03d", $0.offset), Array($0.element.frame().dropFirst(4)))
        })
        let records = CodecTests.operations.filter(\.isMutation).enumerated().map {
            JournalRecord(sequence: UInt64($0.offset + 1), epoch: 1, time: Timestamp(seconds: 5, nanoseconds: 6), session: 1,
                          requestSequence: UInt64($0.offset + 1), operation: $0.element)
        }
        // As a segment holds them: each record says the ones before it were made durable.
        var segment: [UInt8] = []
        for record in records { segment += JournalCodec.encode(record, durableThrough: UInt64(segment.count)) }
        seeds["journal"] = ["all": segment]
        // A small tree, as a server builds it, for the checkpoint and request streams.
        let tree: [Operation] = [
            .mkdir(parent: rootInode, name: FileName("d"), mode: 0o755, CodecTests.caller),
            .create(parent: 2, name: FileName("f"), mode: 0o644, flags: OpenFlags.readWrite, CodecTests.caller),
            .write(3, handle: 1, offset: 0, data: Array(0..<64)),
            .symlink(parent: rootInode, name: FileName("l"), target: Array("d/f".utf8), CodecTests.caller),
            .rename(parent: 2, name: FileName("f"), newParent: rootInode, newName: FileName("g"), flags: 0),
            .setxattr(3, name: FileName("user.k"), value: [1, 2], flags: 0),
            .lookup(parent: rootInode, name: FileName("g")), .readdir(rootInode, cookie: 0, maxBytes: 4096),
        ]
        var namespace = Namespace(createdAt: Timestamp(seconds: 1, nanoseconds: 0))
        for (index, operation) in tree.enumerated() where operation.isMutation {
            _ = namespace.apply(JournalRecord(sequence: namespace.appliedSequence + 1, epoch: 1,
                                              time: Timestamp(seconds: Int64(index), nanoseconds: 0), session: 1,
                                              requestSequence: UInt64(index + 1), operation: operation))
        }
        seeds["checkpoint"] = ["tree": namespace.checkpoint()]
        seeds["requests"] = [
            "tree": tree.enumerated().flatMap { Message.request(sequence: UInt64($0.offset + 1), oldestUnanswered: 1, $0.element).frame() },
            "every-operation": requests.flatMap { $0.frame() },
        ]
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("mountscripts/cluster.example.toml")
        seeds["cluster"] = ["example": Array(try Data(contentsOf: example))]
        return seeds
    }

    func testTheSeedCorpusIsCurrent() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fuzz/corpus")
        let write = ProcessInfo.processInfo.environment["BATON_WRITE_FUZZ_CORPUS"] == "1"
        for (target, files) in try Self.seeds() {
            let directory = root.appendingPathComponent(target)
            if write { try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true) }
            for (name, bytes) in files {
                let file = directory.appendingPathComponent(name)
                if write {
                    try Data(bytes).write(to: file)
                } else {
                    XCTAssertEqual(try? Array(Data(contentsOf: file)), bytes,
                                   "Fuzz/corpus/\(target)/\(name) is stale: BATON_WRITE_FUZZ_CORPUS=1 swift test --filter FuzzCorpusTests")
                }
            }
        }
    }
}
