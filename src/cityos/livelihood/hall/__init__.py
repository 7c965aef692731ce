"""智慧大厅 (the smart service hall): tickets, queues per service group, windows with skills, calling,
wait prediction, and window planning by Erlang C checked with discrete-event simulation."""
