"""一网协同 (livelihood): services that find the person, benefits without application, policy matching
for companies, and care for elderly people living alone.

Sub-packages: `profiles` (department records → resident and enterprise profiles), `policies` (policies
as data and their vectorised evaluation), `proactive` (服务找人 notices, 免申即享 payouts), `eldercare`
(device readings → alerts → escalation chain). `api.py` plugs the domain into the app.

一网协同 II, each its own sub-package plugged in separately: `appointments` (预约, FHIR R4), `hall` (智慧大厅),
`waste` (垃圾分类), `council` (市民议事厅), `community` (社区: repairs, notices, the 15-minute living circle).
"""
