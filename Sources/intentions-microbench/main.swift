// Measures intention decisions per second with a realistic large policy: 1,000 intentions
// over 100 destinations, exact and wildcard sources, some with L7 permissions. Run through
// bench/intentions.sh (release build); numbers go to bench/README.md.
import Foundation
import SidecarModel
import SidecarTLS

let intentionCount = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 1000
let seconds = Double(CommandLine.arguments.dropFirst(2).first ?? "") ?? 2

var intentions: [Intention] = []
for index in 0..<intentionCount {
    let destination = index % 10 == 0 ? "*" : "svc-\(index % 100)"
    let source = index % 7 == 0 ? "*" : "client-\(index)"
    if index % 5 == 0 {
        let permission = IntentionPermission(action: .allow, http: HTTPPermissionMatch(path: .prefix("/repository/"), methods: ["GET", "PUT"]))
        intentions.append(Intention(destinationName: destination, sourceName: source, action: nil, permissions: [permission]))
    } else {
        intentions.append(Intention(destinationName: destination, sourceName: source, action: index % 3 == 0 ? .deny : .allow))
    }
}
// Drop duplicates of (source, destination): the file decoder refuses them too.
var seen = Set<String>()
intentions = intentions.filter { seen.insert($0.identifier).inserted }
let set = IntentionSet(intentions, defaultAction: .deny)

let sources = (0..<4096).map { SPIFFEID(trustDomain: "td.consul", datacenter: "dc1", service: "client-\($0 % (intentionCount + 50))") }
let destinations = (0..<4096).map { "svc-\($0 % 100)" }
let request = HTTPRequestFacts(method: "PUT", path: "/repository/snap-1", headers: [("host", "storage"), (":path", "/repository/snap-1?part=3")])

func measure(_ name: String, _ decide: (Int) -> Bool) {
    var decisions = 0
    var allowed = 0
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        for index in 0..<4096 where decide(index) { allowed += 1 }
        decisions += 4096
    }
    let rate = Double(decisions) / Date().timeIntervalSince(start)
    print("\(name): \(Int(rate)) decisions/s (\(String(format: "%.2f", 1e6 / rate)) µs each, \(allowed) allowed of \(decisions))")
}

print("intentions: \(set.intentions.count)")
measure("L4 connection decision") { set.decide(source: sources[$0], destination: destinations[$0]).allowed }
measure("L7 request decision") { set.decide(request: request, source: sources[$0], destination: destinations[$0]).allowed }
