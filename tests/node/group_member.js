// A consumer-group member for keel's group tests, with kafkajs. The same protocol as
// tests/python/group_member.py: it subscribes to TOPIC in GROUP and prints one JSON
// object per line ({"e":"assigned"|"revoked"|"rec"|"committed"|"closed", ...}),
// committing what it processed after every batch. SIGTERM disconnects cleanly (the
// member leaves the group); SIGKILL is the crash the tests inject.
//
// Usage: node group_member.js BOOTSTRAP GROUP TOPIC [key=value ...]
//   options: strategy=roundrobin (kafkajs's built-in)  session_ms=N
'use strict'

const { Kafka, logLevel, PartitionAssigners } = require('kafkajs')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function main () {
  const [bootstrap, group, topic, ...rest] = process.argv.slice(2)
  const opts = Object.fromEntries(rest.map(a => a.split('=')))
  const kafka = new Kafka({
    clientId: 'keel-tests-kafkajs-group',
    brokers: bootstrap.split(','),
    logLevel: logLevel.WARN,
    retry: { retries: 20, initialRetryTime: 200, maxRetryTime: 2000 }
  })
  const consumer = kafka.consumer({
    groupId: group,
    sessionTimeout: Number(opts.session_ms || 6000),
    heartbeatInterval: 500,
    partitionAssigners: [PartitionAssigners.roundRobin],
    metadataMaxAge: 2000
  })
  let owned = []
  consumer.on(consumer.events.GROUP_JOIN, e => {
    const parts = (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b)
    const revoked = owned.filter(p => !parts.includes(p))
    if (owned.length > 0) out({ e: 'revoked', parts: owned })
    owned = parts
    out({ e: 'assigned', parts })
    void revoked
  })
  let stopping = false
  process.on('SIGTERM', async () => {
    if (stopping) return
    stopping = true
    await consumer.disconnect()
    out({ e: 'closed' })
    process.exit(0)
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachBatchAutoResolve: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
      let last = null
      for (const m of batch.messages) {
        if (!isRunning() || isStale()) break
        out({ e: 'rec', p: batch.partition, o: Number(m.offset), v: m.value.toString() })
        resolveOffset(m.offset)
        last = Number(m.offset)
      }
      if (last !== null) {
        const next = (last + 1).toString()
        try {
          await consumer.commitOffsets([{ topic, partition: batch.partition, offset: next }])
          out({ e: 'committed', offsets: { [batch.partition]: last + 1 } })
        } catch (e) {
          process.stderr.write(`commit failed: ${e.message}\n`)
        }
      }
      await heartbeat()
    }
  })
}

main().catch(e => {
  process.stderr.write(`FAIL: ${e.stack || e}\n`)
  process.exit(1)
})
