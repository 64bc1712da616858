// kafkajs against keel. Usage: node kafkajs_client.js MODE BOOTSTRAP TOPIC [COUNT]
//
// Modes (the same as tests/python/kafka_python_client.py):
//   roundtrip  create TOPIC with 3 partitions, produce COUNT keyed records with headers
//              (acks=all), read every partition back from the beginning and compare keys,
//              values, headers, timestamps and offsets with the produce responses; then
//              read from an offset in the middle of a batch.
//   acks       produce with acks=0, acks=1 and acks=all to a 1-partition topic and read
//              every record back in order.
//   idempotent the roundtrip with kafkajs's idempotent producer.
//   admin      create a topic with a config override, describe its configs, replace
//              them with AlterConfigs, list, delete, and check it is gone.
//   by-time    produce records with known timestamps and look offsets up by timestamp.
// Prints a JSON summary; exits non-zero with a message on any mismatch.
//
// kafkajs's consumer works only inside a consumer group and keel has no group
// coordinator yet, so reads go through the consumer's own fetch path with manual
// assignment: the client's cluster (metadata, leaders, connections), Broker.fetch
// (request and record decoding) and the consumer's Batch (which drops the records
// before the fetch offset when a fetch starts in the middle of a batch).
'use strict'

const { Kafka, logLevel, ConfigResourceTypes, Partitioners } = require('kafkajs')
const Batch = require('kafkajs/src/consumer/batch')
const ISOLATION_LEVEL = require('kafkajs/src/protocol/isolationLevel')

const PARTITIONS = 3
const TIMEOUT_MS = 60000
const MID_BATCH_OFFSET = 7
const SEND_CHUNK_RECORDS = 500
const FETCH_MAX_BYTES = 1 << 20
const FETCH_MAX_WAIT_MS = 100

function fail (msg) {
  process.stderr.write(`FAIL: ${msg}\n`)
  process.exit(1)
}

function client (bootstrap) {
  return new Kafka({
    clientId: 'keel-tests-kafkajs',
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    requestTimeout: TIMEOUT_MS
  })
}

async function createTopic (kafka, topic, numPartitions, configEntries = []) {
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions, replicationFactor: 1, configEntries }],
    waitForLeaders: true,
    timeout: TIMEOUT_MS
  })
  if (!created) fail(`createTopics(${topic}) answered false`)
  await admin.disconnect()
}

// A reader with manual assignment (see the top of the file).
async function reader (kafka, topic) {
  const sym = Object.getOwnPropertySymbols(kafka).find(s => s.description === 'private:Kafka:createCluster')
  const cluster = kafka[sym]({ metadataMaxAge: 300000, allowAutoTopicCreation: false })
  await cluster.connect()
  await cluster.addTargetTopic(topic)
  const isolationLevel = ISOLATION_LEVEL.READ_COMMITTED // the kafkajs consumer's default
  return {
    // Records of `partition` from `from` (inclusive) to `until` (exclusive).
    async read (partition, from, until) {
      const leaders = cluster.findLeaderForPartitions(topic, [partition])
      const broker = await cluster.findBroker({ nodeId: Object.keys(leaders)[0] })
      const out = []
      out.skipped = 0 // records before `from` that the broker returned and Batch dropped
      let offset = from
      const deadline = Date.now() + TIMEOUT_MS
      while (offset < until) {
        if (Date.now() > deadline) fail(`partition ${partition}: stuck at offset ${offset} of ${until}`)
        const { responses } = await broker.fetch({
          maxWaitTime: FETCH_MAX_WAIT_MS,
          minBytes: 1,
          maxBytes: FETCH_MAX_BYTES,
          isolationLevel,
          topics: [{ topic, partitions: [{ partition, fetchOffset: String(offset), maxBytes: FETCH_MAX_BYTES }] }]
        })
        const data = responses[0].partitions[0]
        if (data.errorCode !== 0) fail(`fetch error ${data.errorCode} at ${partition}/${offset}`)
        const batch = new Batch(topic, String(offset), data)
        out.skipped += batch.rawMessages.length - batch.messagesWithinOffset.length
        for (const m of batch.messages) {
          if (Number(m.offset) >= until) break
          if (Number(m.offset) !== offset) fail(`partition ${partition}: offset ${m.offset} after ${offset - 1}`)
          out.push(m)
          offset += 1
        }
      }
      return out
    },
    async endOffset (partition) {
      const [t] = await cluster.fetchTopicsOffset([{ topic, partitions: [{ partition }], fromBeginning: false }])
      return Number(t.partitions[0].offset)
    },
    disconnect: () => cluster.disconnect()
  }
}

// Sends `messages` ({partition, ...}) in chunks; returns the offset of each, from the
// per-partition base offsets in the produce responses.
async function sendAll (producer, topic, acks, messages) {
  const offsets = []
  for (let start = 0; start < messages.length; start += SEND_CHUNK_RECORDS) {
    const chunk = messages.slice(start, start + SEND_CHUNK_RECORDS)
    const meta = await producer.send({ topic, acks, timeout: TIMEOUT_MS, messages: chunk })
    const base = new Map(meta.map(m => [m.partition, Number(m.baseOffset)]))
    const next = new Map()
    for (const m of chunk) {
      const i = next.get(m.partition) || 0
      next.set(m.partition, i + 1)
      offsets.push(acks === 0 ? null : base.get(m.partition) + i)
    }
  }
  return offsets
}

function headerMap (headers) {
  const out = {}
  for (const [k, v] of Object.entries(headers || {})) out[k] = Buffer.from(v).toString()
  return out
}

async function roundtrip (kafka, topic, count, idempotent = false) {
  await createTopic(kafka, topic, PARTITIONS)
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, idempotent, allowAutoTopicCreation: false, maxInFlightRequests: idempotent ? 1 : 5 })
  await producer.connect()
  const baseTs = Date.now() - 60000
  const messages = []
  for (let i = 0; i < count; i++) {
    messages.push({
      partition: i % PARTITIONS,
      key: Buffer.from(`key-${i}`),
      value: Buffer.concat([Buffer.from(`value-${i}-`), Buffer.alloc(i % 50, i % 251)]),
      headers: { seq: String(i), kind: 'roundtrip' },
      timestamp: String(baseTs + i)
    })
  }
  const offsets = await sendAll(producer, topic, -1, messages)
  await producer.disconnect()
  const expected = new Map()
  messages.forEach((m, i) => expected.set(`${m.partition}/${offsets[i]}`, m))
  if (expected.size !== count) fail(`${expected.size} distinct acknowledged offsets for ${count} records`)

  const r = await reader(kafka, topic)
  let read = 0
  for (let p = 0; p < PARTITIONS; p++) {
    const end = await r.endOffset(p)
    const records = await r.read(p, 0, end)
    for (const rec of records) {
      const want = expected.get(`${p}/${rec.offset}`)
      if (!want) fail(`unexpected record at ${p}/${rec.offset}`)
      const got = { key: rec.key.toString(), value: rec.value, headers: headerMap(rec.headers), ts: rec.timestamp }
      if (got.key !== want.key.toString() || !got.value.equals(want.value) ||
          JSON.stringify(got.headers) !== JSON.stringify(want.headers) || got.ts !== want.timestamp) {
        fail(`record ${p}/${rec.offset} differs: ${JSON.stringify({ got, want })}`)
      }
    }
    read += records.length
  }
  if (read !== count) fail(`read ${read} records, produced ${count}`)

  // Start in the middle of a batch: the broker returns the whole batch and the
  // consumer's Batch drops the records before the offset asked for.
  const fromMiddle = await r.read(0, MID_BATCH_OFFSET, MID_BATCH_OFFSET + 1)
  const [first] = fromMiddle
  const want = expected.get(`0/${MID_BATCH_OFFSET}`)
  if (Number(first.offset) !== MID_BATCH_OFFSET || !first.value.equals(want.value)) {
    fail(`reading from offset ${MID_BATCH_OFFSET} gave offset ${first.offset}`)
  }
  if (fromMiddle.skipped !== MID_BATCH_OFFSET) {
    fail(`the broker returned ${fromMiddle.skipped} records before offset ${MID_BATCH_OFFSET}, ` +
         'not the whole batch from offset 0')
  }
  await r.disconnect()
  return { produced: count, read, partitions: PARTITIONS, mid_batch_offset: MID_BATCH_OFFSET, idempotent }
}

async function acks (kafka, topic, count) {
  await createTopic(kafka, topic, 1)
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false })
  await producer.connect()
  const expected = []
  for (const a of [0, 1, -1]) {
    const messages = []
    for (let i = 0; i < count; i++) messages.push({ partition: 0, value: `acks=${a}-${i}` })
    const offsets = await sendAll(producer, topic, a, messages)
    if (a !== 0 && offsets.some(o => !(o >= 0))) fail(`acks=${a}: no offset in the produce response`)
    expected.push(...messages.map(m => m.value))
  }
  await producer.disconnect()
  const r = await reader(kafka, topic)
  const end = await r.endOffset(0)
  const values = (await r.read(0, 0, end)).map(m => m.value.toString())
  await r.disconnect()
  if (JSON.stringify(values) !== JSON.stringify(expected)) {
    fail(`read ${values.length} records, expected ${expected.length}`)
  }
  return { acks: ['0', '1', 'all'], read: values.length }
}

async function admin (kafka, topic) {
  const a = kafka.admin()
  await a.connect()
  const created = await a.createTopics({
    topics: [{ topic, numPartitions: 2, replicationFactor: 1, configEntries: [{ name: 'retention.ms', value: '123456' }] }],
    waitForLeaders: true
  })
  if (!created) fail('createTopics answered false')
  if (!(await a.listTopics()).includes(topic)) fail(`${topic} not listed after create`)
  const meta = await a.fetchTopicMetadata({ topics: [topic] })
  if (meta.topics[0].partitions.length !== 2) fail(`metadata: ${JSON.stringify(meta)}`)
  const describe = async () => {
    const res = await a.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }],
      includeSynonyms: false
    })
    const r = res.resources[0]
    if (r.errorCode !== 0) fail(`describeConfigs error ${r.errorCode}`)
    return Object.fromEntries(r.configEntries.map(e => [e.configName, e.configValue]))
  }
  let configs = await describe()
  if (configs['retention.ms'] !== '123456') fail(`retention.ms is ${configs['retention.ms']}`)
  // AlterConfigs (not incremental) replaces the topic's whole set of overrides.
  await a.alterConfigs({
    validateOnly: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'max.message.bytes', value: '54321' }] }]
  })
  configs = await describe()
  if (configs['max.message.bytes'] !== '54321') fail(`max.message.bytes is ${configs['max.message.bytes']}`)
  if (configs['retention.ms'] === '123456') fail('AlterConfigs kept an override it was not given')
  await a.deleteTopics({ topics: [topic], timeout: TIMEOUT_MS })
  const deadline = Date.now() + TIMEOUT_MS
  while ((await a.listTopics()).includes(topic)) {
    if (Date.now() > deadline) fail(`${topic} still listed after delete`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  await a.disconnect()
  return { created: topic, described: true, altered: true, deleted: true }
}

async function byTime (kafka, topic, count) {
  await createTopic(kafka, topic, 1)
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false })
  await producer.connect()
  const baseTs = 1700000000000
  const stepMs = 10
  const messages = []
  for (let i = 0; i < count; i++) messages.push({ partition: 0, value: `t${i}`, timestamp: String(baseTs + i * stepMs) })
  const offsets = await sendAll(producer, topic, -1, messages)
  await producer.disconnect()
  const a = kafka.admin()
  await a.connect()
  const checks = [
    [baseTs - 1, offsets[0]], // before everything: the first record
    [baseTs + 5 * stepMs, offsets[5]], // exact hit
    [baseTs + 5 * stepMs + 1, offsets[6]], // between two records: the next one
    [baseTs + count * stepMs, count] // after the last record: the log end offset
  ]
  for (const [ts, want] of checks) {
    const [res] = await a.fetchTopicOffsetsByTimestamp(topic, ts)
    if (Number(res.offset) !== want) fail(`offset for time ${ts} is ${res.offset}, expected ${want}`)
  }
  const [o] = await a.fetchTopicOffsets(topic)
  if (Number(o.low) !== 0 || Number(o.high) !== count) fail(`fetchTopicOffsets: ${JSON.stringify(o)}`)
  await a.disconnect()
  return { lookups: checks.length }
}

const MODES = {
  roundtrip: (k, t, n) => roundtrip(k, t, n, false),
  idempotent: (k, t, n) => roundtrip(k, t, n, true),
  acks,
  admin,
  'by-time': byTime
}

async function main () {
  const [mode, bootstrap, topic, count] = process.argv.slice(2)
  if (!MODES[mode]) fail(`unknown mode ${mode}`)
  const summary = await MODES[mode](client(bootstrap), topic, Number(count || 100))
  process.stdout.write(JSON.stringify(summary) + '\n')
}

main().catch(e => fail(e.stack || String(e)))
