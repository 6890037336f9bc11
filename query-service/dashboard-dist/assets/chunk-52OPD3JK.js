function i(e,a,o){let r;return e.data.subscribe(a,t=>{e.report(t);for(let n of t.data?.host_overall_metrics?.rows??[])e.nodes.add(n.host);t.data!==r&&(r=t.data,o(t))})}export{i as a};
