"""The agent's half of the coordinator link: which agent holds it (`gateway`), the
link's stream of sequences and acks (`sitelink`), and commands run at most once
(`commands`)."""
