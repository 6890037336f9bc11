function i(r,a,o){let e;return r.data.subscribe(a,t=>{r.report(t);for(let n of t.data?.host_overall_metrics?.rows??[])r.nodes.add(n.host);t.data!==e&&(e=t.data,o(t))})}export{i as a};
